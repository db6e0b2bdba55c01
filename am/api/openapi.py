"""OpenAPI pieces shared by the task API and the SageMaker contract, so the document matches behaviour.

FastAPI documents a 422 for every route with parameters, but these servers answer bad
parameters with 400 (a client error like any other malformed request); :func:`install_openapi`
drops those 422 entries. Raw image bodies are not pydantic models, so their request and
response content is described here explicitly::

    @app.post("/tasks", openapi_extra=image_body(TASK_MEDIA_TYPES), responses=error_responses(400, 415))

The interactive pages ``/docs`` (Swagger UI) and ``/redoc`` load their JavaScript and CSS from this
server, not from a CDN, so they work on a lab machine with no internet (:func:`offline_docs_app`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.routing import BaseRoute

# Where the Swagger UI and ReDoc JavaScript, CSS and icon are served (from the fastapi-offline package).
DOCS_ASSETS_URL = "/docs-assets"

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"detail": {"type": "string", "description": "what is wrong and what to do"}},
    "required": ["detail"],
}
_DESCRIPTIONS = {
    400: "Malformed request: task id, parameters, or an image that does not decode",
    404: "No task with this id",
    409: "The task has no such result (not finished, failed, or not registered)",
    413: "Request body, or the image it decodes to, larger than the server accepts",
    415: "Content-Type not accepted",
    503: "Not ready, or stopping (an upload that came in as the server was told to stop): try again shortly",
    507: "The server has no room to store the upload (disk full, quota or file-size limit): try again later",
}


def offline_docs_app(**kwargs: Any) -> FastAPI:
    """``FastAPI(**kwargs)`` whose ``/docs`` and ``/redoc`` pages load their assets from :data:`DOCS_ASSETS_URL`.

    FastAPI's own pages fetch Swagger UI and ReDoc from cdn.jsdelivr.net, so on an offline machine
    they stay blank. fastapi-offline is FastAPI's documented recipe for self-hosting them
    (``get_swagger_ui_html`` and ``get_redoc_html`` pointed at a StaticFiles mount) with the files
    shipped in the package, so that they are upgraded with pip rather than copied in by hand.
    """
    return FastAPIOffline(static_url=DOCS_ASSETS_URL, **kwargs)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for JSON error bodies with these status codes."""
    return {code: {"description": _DESCRIPTIONS[code], "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
            for code in codes}


def image_body(media_types: Iterable[str]) -> dict[str, Any]:
    """``openapi_extra`` describing a required raw image request body."""
    schema = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "content": {m: {"schema": schema} for m in media_types}}}


def image_response(media_type: str) -> dict[int | str, dict[str, Any]]:
    """A 200 whose body is an image (and nothing else: FastAPI would otherwise add application/json)."""
    return {200: {"description": "The image", "content": {media_type: {"schema": {"type": "string",
                                                                                  "format": "binary"}}}}}


def _without_head(routes: Iterable[BaseRoute]) -> list[BaseRoute]:
    """The routes as documented: each GET also answers HEAD (:mod:`am.api.head`), which the
    document leaves out, as HTTP implies it (a second operation would repeat the GET's id)."""
    documented: list[BaseRoute] = []
    for route in routes:
        if isinstance(route, APIRoute) and "HEAD" in route.methods:
            route = copy.copy(route)
            route.methods = route.methods - {"HEAD"}
        documented.append(route)
    return documented


def install_openapi(app: FastAPI) -> None:
    """Serve an OpenAPI document without FastAPI's automatic 422 responses and JSON on binary 200s."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=_without_head(app.routes))
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                responses.pop("422", None)
                ok = responses.get("200", {}).get("content", {})
                if len(ok) > 1:
                    ok.pop("application/json", None)
        schemas = schema.get("components", {}).get("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["DOCS_ASSETS_URL", "error_responses", "image_body", "image_response", "install_openapi",
           "offline_docs_app"]
