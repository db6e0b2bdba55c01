"""HEAD on every GET route, as HTTP says a server should (RFC 9110, 9.3.2).

FastAPI routes answer only the methods they are declared with, so ``curl -I`` on a result, or a
load balancer or proxy checking ``/health`` with HEAD, got 405. Rather than declare every route
twice (and document each one twice), the servers wrap their app::

    app.add_middleware(HeadAsGet)

A HEAD request is answered by the GET route, with its status and headers (``Content-Length``
included) and no body; a route that has no GET still answers 405.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """ASGI middleware: serve HEAD with the GET route, and send its headers without the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            # A file may be sent by path (the pathsend extension) rather than in body chunks.
            if message["type"] in ("http.response.body", "http.response.pathsend"):
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


__all__ = ["HeadAsGet"]
