"""HEAD on every GET route, as HTTP says a server should (RFC 9110, 9.3.2).

FastAPI routes answer only the methods they are declared with, so ``curl -I`` on a result, or a
load balancer or proxy checking ``/health`` with HEAD, got 405. Once every route is declared,
the servers call::

    answer_head(app)

and each GET route takes HEAD too: Starlette's file responses then send their headers without
reading the file, and uvicorn drops any other body. The OpenAPI document keeps one operation
per route (:func:`am.api.openapi.install_openapi` leaves HEAD out); a route without GET still
answers HEAD with 405.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute


def answer_head(app: FastAPI) -> None:
    """Let every GET route of ``app`` declared so far answer HEAD as well."""
    for route in app.routes:
        if isinstance(route, APIRoute) and "GET" in route.methods:
            route.methods.add("HEAD")


__all__ = ["answer_head"]
