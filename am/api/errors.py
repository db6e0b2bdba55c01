"""How both HTTP services answer an error: JSON ``{"detail": message}`` with a mapped status.

Each service passes its own table for the project's errors, first match wins; anything unmapped
is a 500 and is logged. A file the server cannot write or read (OSError) is the server's fault:
507 where its disk is full (or a quota or file-size limit is reached), else 500, the path in the
log only. Any other exception is a 500 too, logged with its traceback::

    install_error_handler(app, ((UnsupportedMediaType, 415), (BodyTooLarge, 413), (InputError, 400)))
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from am.errors import AmError

log = logging.getLogger(__name__)

# What a full disk, a full quota or the process's file-size limit (ulimit -f) raise: 507 Insufficient Storage.
NO_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
UNEXPECTED = "the server failed unexpectedly; its log says why. Try again, or tell the server's operator"


def status_for(exc: AmError, statuses: Sequence[tuple[type[AmError], int]]) -> int:
    """The HTTP status of the first class ``exc`` is an instance of; anything unlisted is the server's fault (500)."""
    return next((code for cls, code in statuses if isinstance(exc, cls)), 500)


def storage_status(exc: OSError) -> int:
    """507 where the server ran out of room for a file (:data:`NO_STORAGE_ERRNOS`), else 500."""
    return 507 if exc.errno in NO_STORAGE_ERRNOS else 500


def storage_detail(method: str, exc: OSError) -> str:
    """What the client is told of an OSError: what the server could not do and why, not where (its folders
    are its own)."""
    what = "store the upload" if method == "POST" else "read or write its files"
    why = exc.strerror or type(exc).__name__
    advice = ("send it again later, once the server has room; tell its operator if this goes on"
              if storage_status(exc) == 507 else "tell the server's operator")
    return f"the server could not {what}: {why}; {advice}"


def install_error_handler(app: FastAPI, statuses: Sequence[tuple[type[AmError], int]]) -> None:
    """Turn the project's errors into JSON answers whose ``detail`` is the message a CLI user would see;
    OSError and any other exception into JSON as well (see the module's description)."""
    @app.exception_handler(AmError)
    async def am_error(request: Request, exc: AmError) -> JSONResponse:
        code = status_for(exc, statuses)
        if code == 500:  # 503 (stopping) is no fault of the server's
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return JSONResponse(status_code=code, content={"detail": str(exc)})

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError) -> JSONResponse:
        code = storage_status(exc)
        detail = storage_detail(request.method, exc)
        if code == 507:  # the disk's state, not a bug: the path and the reason are all the operator needs
            log.error("%s %s failed (%d): %s", request.method, request.url.path, code, exc)
        else:
            log.error("%s %s failed (%d): %s", request.method, request.url.path, code, exc, exc_info=exc)
        return JSONResponse(status_code=code, content={"detail": detail})

    app.add_middleware(LastResort)


class LastResort:
    """ASGI middleware: an exception no handler took is logged with its traceback and answered with a JSON
    500, where no answer was started (Starlette's own last resort answers in plain text)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if started:  # too late for an answer: the server ends the connection and logs it
                raise
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            await JSONResponse(status_code=500, content={"detail": UNEXPECTED})(scope, receive, send)


__all__ = ["LastResort", "install_error_handler", "status_for", "storage_detail", "storage_status"]
