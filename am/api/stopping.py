"""What a server told to stop (Ctrl-C, SIGTERM) does with the requests still running: answer or cut them, say so once.

uvicorn waits for the requests in progress, then, past its graceful-shutdown timeout, logs its own
ERROR ("Cancel N running task(s)") and cancels them; a request whose answer had started (a download
to a slow client) then ends in "Exception in ASGI application" with a CancelledError traceback. A
supervisor reads both as a crash. Here the server cuts them first, after :data:`GRACE_S`, and logs
one warning with their number; uvicorn's timeout stays behind it as a backstop::

    requests = InFlightRequests(app)
    server = StoppingServer(uvicorn.Config(requests, timeout_graceful_shutdown=GRACE_S + BACKSTOP_S),
                            requests=requests, grace_s=GRACE_S)

A cut request that has not answered yet gets a 503 (an upload still arriving gets the 503 of
:mod:`am.api.uploads`; work already running in a thread is finished and answered, see
:func:`am.api.uploads.finish_in_thread`); one whose answer had started has its connection closed,
so the client sees a response cut short, never one that looks complete.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# Seconds the requests running when a stop is asked for get to finish before they are cut.
GRACE_S = 10.0
# Seconds after the cut before uvicorn cancels what still runs (its own ERROR): only work that cannot be
# cut, such as a record being segmented in a thread, runs that long.
BACKSTOP_S = 30.0
# What uvicorn's error logger is called: where it logs a request that ended with an exception.
UVICORN_ERROR_LOGGER = "uvicorn.error"
STOPPING_DETAIL = "the server is stopping; send the request again once it is back"
_CUT = "cut: the server is stopping"


@dataclass(eq=False)
class _Request:
    task: asyncio.Task[object]
    started: bool = False
    cut: bool = False


@dataclass(eq=False)
class InFlightRequests:
    """ASGI middleware: knows the HTTP requests being answered, so that a stopping server can cut them.

    ``app`` is the application; :meth:`cut` cancels every request still running and returns how many.
    """

    app: ASGIApp
    _running: set[_Request] = field(default_factory=set, init=False)
    #: Whether :meth:`cut` has cut any request.
    cut_any: bool = field(default=False, init=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        if scope["type"] != "http" or task is None:
            await self.app(scope, receive, send)
            return
        request = _Request(task)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                request.started = True
            await send(message)

        self._running.add(request)
        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            # Another's cancellation, or an answer already on its way: uvicorn closes the connection.
            if not request.cut or request.started:
                raise
            task.uncancel()
            await JSONResponse(status_code=503, content={"detail": STOPPING_DETAIL})(scope, receive, send)
        finally:
            self._running.discard(request)

    def cut(self) -> int:
        """Cancel every request still running; how many there were."""
        running = list(self._running)
        for request in running:
            request.cut = True
            request.task.cancel(msg=_CUT)
        self.cut_any = self.cut_any or bool(running)
        return len(running)


class _QuietCuts(logging.Filter):
    """Drops uvicorn's traceback of a request that the stop cut (its connection is closed, as it should be):
    :class:`StoppingServer` has said how many it cut."""

    def __init__(self, requests: InFlightRequests) -> None:
        super().__init__()
        self._requests = requests

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (self._requests.cut_any and isinstance(error, asyncio.CancelledError))


class StoppingServer(uvicorn.Server):
    """uvicorn's server, cutting the requests still running ``grace_s`` after it was told to stop."""

    def __init__(self, config: uvicorn.Config, *, requests: InFlightRequests, grace_s: float = GRACE_S) -> None:
        super().__init__(config)
        self._requests = requests
        self._grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        cutter = asyncio.create_task(self._cut_after_grace())
        quiet = _QuietCuts(self._requests)
        logging.getLogger(UVICORN_ERROR_LOGGER).addFilter(quiet)
        try:
            await super().shutdown(sockets=sockets)
        finally:
            cutter.cancel()
            logging.getLogger(UVICORN_ERROR_LOGGER).removeFilter(quiet)

    async def _cut_after_grace(self) -> None:
        await asyncio.sleep(self._grace_s)
        if cut := self._requests.cut():
            log.warning("stopping: %d request(s) still running %g s after the stop was asked for are cut off "
                        "(those not yet answered get 503, to be sent again)", cut, self._grace_s)


__all__ = ["BACKSTOP_S", "GRACE_S", "STOPPING_DETAIL", "InFlightRequests", "StoppingServer"]
