"""How both HTTP services answer an am-segm error: JSON ``{"detail": message}`` with a mapped status.

Each service passes its own table, first match wins; anything unmapped is a 500 and is logged::

    install_error_handler(app, ((UnsupportedMediaType, 415), (BodyTooLarge, 413), (InputError, 400)))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from am.errors import AmError, ConfigError

log = logging.getLogger(__name__)


def status_for(exc: AmError, statuses: Sequence[tuple[type[AmError], int]]) -> int:
    """The HTTP status of the first class ``exc`` is an instance of; anything unlisted is the server's fault (500)."""
    return next((code for cls, code in statuses if isinstance(exc, cls)), 500)


def install_error_handler(app: FastAPI, statuses: Sequence[tuple[type[AmError], int]]) -> None:
    """Turn the project's errors into JSON answers whose ``detail`` is the message a CLI user would see."""
    @app.exception_handler(AmError)
    async def am_error(request: Request, exc: AmError) -> JSONResponse:
        code = status_for(exc, statuses)
        if code >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return JSONResponse(status_code=code, content={"detail": str(exc)})


# uvicorn exits with this status when the server cannot start (most often: the port is taken).
UVICORN_STARTUP_FAILURE = 3


def serve(run: Callable[[], None], *, host: str, port: int) -> None:
    """Run ``run`` (uvicorn.run), turning uvicorn's own exit when it cannot start into a ConfigError,
    so both services exit 1 with a message like every other command, not with uvicorn's status 3."""
    try:
        run()
    except SystemExit as exc:
        if exc.code == UVICORN_STARTUP_FAILURE:
            raise ConfigError(f"the server could not start on {host}:{port} (the error above says why: if the "
                              "address is in use, another server holds the port; choose another --port)") from None
        raise
