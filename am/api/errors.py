"""How both HTTP services answer an am-segm error: JSON ``{"detail": message}`` with a mapped status.

Each service passes its own table, first match wins; anything unmapped is a 500 and is logged::

    install_error_handler(app, ((UnsupportedMediaType, 415), (BodyTooLarge, 413), (InputError, 400)))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from am.errors import AmError

log = logging.getLogger(__name__)


def status_for(exc: AmError, statuses: Sequence[tuple[type[AmError], int]]) -> int:
    """The HTTP status of the first class ``exc`` is an instance of; anything unlisted is the server's fault (500)."""
    return next((code for cls, code in statuses if isinstance(exc, cls)), 500)


def install_error_handler(app: FastAPI, statuses: Sequence[tuple[type[AmError], int]]) -> None:
    """Turn the project's errors into JSON answers whose ``detail`` is the message a CLI user would see."""
    @app.exception_handler(AmError)
    async def am_error(request: Request, exc: AmError) -> JSONResponse:
        code = status_for(exc, statuses)
        if code == 500:  # 503 (stopping) is no fault of the server's
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return JSONResponse(status_code=code, content={"detail": str(exc)})
