"""Task files served with the API's JSON errors, Range requests included.

Starlette's FileResponse answers a Range header it cannot serve by itself, with a plain-text 400
(malformed) or an empty 416 (past the file's end), out of reach of the app's error handlers. The
API's clients read every error as JSON ``{"detail": ...}``; :class:`TaskFile` rewrites those two.
"""

from __future__ import annotations

import json

from fastapi.responses import FileResponse
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

# The statuses FileResponse sends for a Range header, and what a client is told for each.
_RANGE_ERRORS = {
    400: "the Range header {range!r} is malformed: ask for bytes=START-END, or leave the header out for the "
         "whole file",
    416: "the Range header {range!r} asks for bytes past the end of the file ({size}); ask for bytes within it, "
         "or leave the header out for the whole file",
}


class TaskFile(FileResponse):
    """A FileResponse whose Range errors are JSON, as every other error of the API."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        asked = Headers(scope=scope).get("range")
        if asked is None:
            await super().__call__(scope, receive, send)
            return
        held: Message | None = None

        async def relay(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] in _RANGE_ERRORS:
                held = message  # its body follows: the JSON one is sent in its place
                return
            if held is not None and message["type"] == "http.response.body":
                await _send_json(send, held, asked)
                held = None
                return
            await send(message)

        await super().__call__(scope, receive, relay)


async def _send_json(send: Send, start: Message, asked: str) -> None:
    headers = Headers(raw=start["headers"])
    size = headers.get("content-range", "").removeprefix("bytes */")
    detail = _RANGE_ERRORS[start["status"]].format(range=asked[:80], size=f"{size} bytes" if size else "its size")
    body = json.dumps({"detail": detail}).encode("utf-8")
    kept = [(name, value) for name, value in start["headers"] if name not in (b"content-type", b"content-length")]
    await send({**start, "headers": [*kept, (b"content-type", b"application/json"),
                                     (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
