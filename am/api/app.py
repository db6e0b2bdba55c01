"""The task API: submit an image, poll its task, fetch the mask and the AM ids.

Routes (the OpenAPI document at ``/openapi.json`` says the same, status codes included)::

    POST   /tasks?rows=R&cols=C   image/png or image/tiff body -> 201, Location: /tasks/<id>
    GET    /tasks[?status=S]      {"tasks": [<as GET /tasks/<id>, with "id">, ...]}, oldest first
    GET    /tasks/<id>            {"status": QUEUED|RUNNING|FINISHED|FAILED, "progress": 0..1|null, "error": ...,
                                   "marks_numbered": N|null, "warnings": [...]}
    DELETE /tasks/<id>            stop the task if running, remove it and its results -> 204
    GET    /masks/<id>            the stitched 0/255 mask as PNG, once FINISHED
    GET    /ams/<id>              the 16-bit AM id image (PNG), once FINISHED, if rows/cols were given
    GET    /ams/<id>.csv          the AM table id,row,col,x,y,area_px
    GET    /overlays/<id>         the overlay a person checks (outlines and ids), PNG; X-Am-Overlay says which
                                  (also for a FAILED task whose image was segmented: the marks found)
    GET    /health                liveness and queue counts (503 with a reason if tasks can no longer run)
    GET    /docs, /redoc          the interactive description; its scripts come from /docs-assets, not a CDN

HEAD on any GET route answers with that GET's status and headers and no body (``curl -I``).

Client mistakes get a 4xx with ``{"detail": "<what is wrong and what to do>"}``: 400 malformed
id or parameters (unknown or repeated ones included) or an undecodable or blank image, 404 unknown
id, 409 results not ready, 413 body too large, 415 wrong Content-Type. The server's own faults are
JSON too: 507 an upload it has no room to store, 500 a task record it cannot read or anything
else (logged). The app gets its collaborators passed in::

    app = create_app(TaskStore(Path("api-data")), runner, max_bytes=DEFAULT_MAX_BYTES)
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from am.api.errors import install_error_handler
from am.api.file_response import TaskFile
from am.api.head import answer_head
from am.api.openapi import error_responses, image_body, image_response, install_openapi, offline_docs_app
from am.api.progress import tile_progress
from am.api.runner import TaskRunner, api_words
from am.api.tasks import FAILED, FINISHED, GROUP, QUEUED, DamagedTask, Task, TaskStore, UnknownTask, check_task_id
from am.api.uploads import (
    DEFAULT_MAX_BYTES,
    TASK_MEDIA_TYPES,
    check_image,
    declared_length,
    finish_in_thread,
    media_kind,
    receive_request_body,
)
from am.errors import AmError, InputError
from am.grid_shape import MAX_NODES, grid_shape_error
from am.register.outputs import JSON_NAME, OVERLAY_NAME

log = logging.getLogger(__name__)

# Decoding an upload takes memory comparable to its pixels (at most decoded_limit(max_bytes) each,
# checked from the header first); check at most this many at once.
CHECKS_AT_ONCE = 2
API_VERSION = "1"
# Documented only: the id is checked by check_task_id, whose message says what an id looks like.
TaskId = Annotated[str, PathParam(description="the id from the Location header of POST /tasks",
                                  json_schema_extra={"pattern": "^[0-9a-f]{32}$"})]


class TaskNotReady(AmError):
    """The task exists but has no such result (yet): HTTP 409."""


# Which overlay GET /overlays/<id> sends, in this header: registration's (outlines and ids, once the marks
# are numbered) or segmentation's (the mask drawn over the image: a task without rows and cols, or one
# whose registration failed, where it is what shows the rows and cols the marks really form).
OVERLAY_HEADER = "X-Am-Overlay"
REGISTRATION_OVERLAY = "registration"
SEGMENTATION_OVERLAY = "segmentation"
OVERLAY_DESCRIPTION = (
    f"The overlay a person checks, PNG. The `{OVERLAY_HEADER}` header says which: `{REGISTRATION_OVERLAY}` "
    f"(outlines and AM ids) for a FINISHED task with rows and cols, `{SEGMENTATION_OVERLAY}` (the mask "
    "drawn over the image) for one without, and for a FAILED task whose image was segmented before it failed "
    "(registration refused the rows and cols, say): the marks found, to compare the rows and cols with before "
    "submitting again. 409 while the task is QUEUED or RUNNING, or when it failed before any overlay was made.")


# The query parameters each route takes; the others under these paths take none.
QUERY_PARAMETERS = {("POST", "/tasks"): ("rows", "cols"), ("GET", "/tasks"): ("status",)}
API_PATHS = ("/tasks", "/masks/", "/ams/", "/overlays/", "/health")


def query_problem(method: str, path: str, names: list[str]) -> str | None:
    """Why the query parameters ``names`` cannot be taken by ``method path``: one it does not take, or one
    given twice. Either would be dropped silently: ``?row=8`` would give a task whose marks are never
    numbered, ``DELETE ...?dry_run=1`` would delete."""
    if not path.startswith(API_PATHS):
        return None
    takes = QUERY_PARAMETERS.get(("GET" if method == "HEAD" else method, path), ())
    unknown = sorted(set(names) - set(takes))
    if unknown:
        accepted = " and ".join(takes) if takes else "no parameters"
        return f"unknown query parameter(s) {', '.join(unknown)}: {method} {path} takes {accepted}"
    repeated = sorted(name for name in set(names) if names.count(name) > 1)
    if repeated:
        return f"{' and '.join(repeated)} given more than once; give each once"
    return None


class RefuseWhatWouldBeIgnored:
    """ASGI middleware: 400 for a path with a control character or a query parameter the route would ignore.

    Route patterns end in "$", which also matches before a final newline: "/tasks/<id>%0A" would reach
    (and DELETE would remove) the task <id>. Plain ASGI rather than Starlette's ``@app.middleware``, which
    runs the route in a task group of its own: there the cancellation uvicorn sends at the end of its
    graceful shutdown would keep coming back while :func:`am.api.uploads.finish_in_thread` finishes a request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self.problem(scope)
            if problem is not None:
                await JSONResponse(status_code=400, content={"detail": problem})(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def problem(scope: Scope) -> str | None:
        path = scope["path"]
        if any(ord(character) < 32 or ord(character) == 127 for character in path):
            return "the path is malformed: it holds a control character (such as %0A); send the id exactly as issued"
        names = [name for name, _ in QueryParams(scope.get("query_string", b"")).multi_items()]
        return query_problem(scope["method"], path, names)


class TaskView(BaseModel):
    """A task as ``GET /tasks/<id>`` reports it."""

    id: str = Field(description="32 lower-case hex digits")
    status: str = Field(description="QUEUED, RUNNING, FINISHED or FAILED",
                        json_schema_extra={"enum": ["QUEUED", "RUNNING", "FINISHED", "FAILED"]})
    progress: float | None = Field(description="fraction of tiles segmented (0..1); null before the image is tiled")
    error: str | None = Field(description="why the task failed; null unless FAILED")
    rows: int | None = Field(description="acquisition grid rows, when registration was asked for")
    cols: int | None = Field(description="acquisition grid columns, when registration was asked for")
    marks_numbered: int | None = Field(None, description="marks given an id; null until a registered task finishes")
    warnings: list[str] = Field(default_factory=list,
                                description="what registration says a person should check on the overlay "
                                            "(GET /overlays/<id>): ids possibly a row off, joined marks, debris")
    created: float = Field(description="seconds since the epoch")
    updated: float = Field(description="seconds since the epoch")


class TaskList(BaseModel):
    """What ``GET /tasks`` reports: every task this server keeps, oldest first."""

    tasks: list[TaskView]


class Health(BaseModel):
    """What ``GET /health`` reports: 200 with status "ok", or 503 with status "unhealthy" and the reason."""

    status: str = Field(description='"ok", or "unhealthy" (with reason) when tasks can no longer run',
                        json_schema_extra={"enum": ["ok", "unhealthy"]})
    reason: str | None = Field(None, description="why the server is unhealthy; null when ok")
    queued: int = Field(description="tasks waiting to run (deleted ones not counted)")
    running: int = Field(description="pipelines running now")
    concurrency: int = Field(description="tasks run at the same time")


def overlay_response() -> dict[int | str, dict[str, Any]]:
    """GET /overlays' 200: a PNG, with the header saying which overlay it is."""
    response = image_response("image/png")
    response[200] = {**response[200], "description": "The overlay (which one: the header)", "headers": {
        OVERLAY_HEADER: {"description": f"`{REGISTRATION_OVERLAY}` (outlines and AM ids) or `{SEGMENTATION_OVERLAY}` "
                                        "(the mask drawn over the image)",
                         "schema": {"type": "string", "enum": [REGISTRATION_OVERLAY, SEGMENTATION_OVERLAY]}}}}
    return response


def _statuses() -> tuple[tuple[type[AmError], int], ...]:
    from am.api.tasks import MalformedTaskId
    from am.api.uploads import BodyTooLarge, ServerStopping, UnsupportedMediaType

    return ((MalformedTaskId, 400), (UnknownTask, 404), (UnsupportedMediaType, 415),
            (BodyTooLarge, 413), (TaskNotReady, 409), (InputError, 400), (ServerStopping, 503))


def create_app(store: TaskStore, runner: TaskRunner, *, max_bytes: int = DEFAULT_MAX_BYTES) -> FastAPI:
    """The ASGI app; starting it (its lifespan) starts ``runner``, stopping it stops ``runner``."""
    checks = anyio.CapacityLimiter(CHECKS_AT_ONCE)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store.clean_leftovers()
        runner.start()
        log.info("task API ready: data in %s, %d task(s) at a time", store.data_dir, runner.concurrency)
        yield
        await anyio.to_thread.run_sync(runner.stop)

    app = offline_docs_app(
        title="am-segm task API",
        version=API_VERSION,
        description="Segment ablation marks in one microscopy image per task, and number them by acquisition "
                    "grid position when rows and cols are given.",
        lifespan=lifespan,
    )

    install_error_handler(app, _statuses())
    app.add_middleware(RefuseWhatWouldBeIgnored)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(status_code=400, content={"detail": f"bad request parameters: {problems}"})

    def view(task: Task) -> dict[str, Any]:
        if task.status == FINISHED:
            progress: float | None = 1.0
        elif task.status == QUEUED and not store.layout(task.id).tile_plan(GROUP).is_file():
            progress = 0.0
        else:
            progress = tile_progress(store.layout(task.id), GROUP)
        numbered, warnings = registration_summary(task)
        return TaskView(id=task.id, status=task.status, progress=progress, error=task.error, rows=task.rows,
                        cols=task.cols, created=task.created, updated=task.updated, marks_numbered=numbered,
                        warnings=warnings).model_dump()

    # A finished task's registration does not change: read once, not on every poll (or listing).
    summaries: dict[str, tuple[int | None, list[str]]] = {}

    def registration_summary(task: Task) -> tuple[int | None, list[str]]:
        """Marks numbered and registration's warnings, from the task's registration.json."""
        if task.status != FINISHED or not task.register:
            return None, []
        if task.id in summaries:
            return summaries[task.id]
        path = store.layout(task.id).am_coords_dir(GROUP) / JSON_NAME
        try:
            record = json.loads(path.read_text())
            summary = int(record["marks_assigned"]), [api_words(str(w)) for w in record["warnings"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A task deleted since it was read has nothing to warn about: store.get says UnknownTask for it.
            store.get(task.id)
            # Not kept: the warning stays in the log for as long as the record cannot be read.
            log.warning("task %s: its registration record %s cannot be read: %s", task.id, path, exc)
            return None, []
        summaries[task.id] = summary
        if not store.exists(task.id):
            # Deleted meanwhile: DELETE may have dropped the task's entry before it was made.
            summaries.pop(task.id, None)
        return summary

    def listed(task: Task) -> dict[str, Any] | None:
        """``task`` as GET /tasks shows it, or None where it was deleted while the tasks were listed (its
        folder then reads as a task that never started). Ids are never issued twice: a task still there
        once its view is made was there while it was made."""
        try:
            shown = view(task)
        except UnknownTask:
            return None
        return shown if store.exists(task.id) else None

    def finished(task: Task) -> Task:
        """``task``, or TaskNotReady saying why it has no results (yet)."""
        if task.status != FINISHED:
            hint = f"it failed: {task.error}" if task.status == FAILED else "poll GET /tasks/<id> until FINISHED"
            raise TaskNotReady(f"task {task.id} is {task.status}, so it has no results; {hint}")
        return task

    @app.post(
        "/tasks",
        status_code=201,
        response_model=TaskView,
        summary="Submit an image for segmentation",
        responses={201: {"description": "Task queued", "headers": {"Location": {
            "description": "/tasks/<id>", "schema": {"type": "string"}}}},
                   **error_responses(400, 413, 415, 503, 507)},
        openapi_extra=image_body(TASK_MEDIA_TYPES),
    )
    async def submit(
        request: Request,
        rows: int | None = Query(None, ge=1, le=MAX_NODES, description="acquisition grid rows (with cols)"),
        cols: int | None = Query(None, ge=1, le=MAX_NODES, description="acquisition grid columns (with rows)"),
    ) -> JSONResponse:
        # Unknown and repeated parameters (one of two rows would count, silently) are refused by
        # refuse_what_would_be_ignored.
        if (rows is None) != (cols is None):
            raise InputError("give rows and cols together to register the marks, or neither to get only the mask")
        # The pipeline's check, before the upload is stored: a grid of fewer positions than registration
        # fits one to, or of more than a 16-bit id image can number, could never be registered.
        if problem := grid_shape_error(rows, cols, split_advice="crop the image into parts of at most that many "
                                                                "positions and submit each with its own rows and cols"):
            raise InputError(problem)
        kind = media_kind(request.headers.get("content-type"), accepted=TASK_MEDIA_TYPES)
        declared_length(request.headers.get("content-length"), max_bytes=max_bytes)
        part = store.upload_path()
        try:
            await receive_request_body(request, part, max_bytes=max_bytes)
            # Once started, a check and the task's creation are finished even if the server is told to stop.
            image = await finish_in_thread(
                lambda: check_image(part, kind=kind, max_bytes=max_bytes, scale=runner.scale), limiter=checks)
            task = await finish_in_thread(lambda: store.create(image, rows=rows, cols=cols))
        finally:
            for leftover in (part, part.with_suffix(".png"), part.with_suffix(".tiff")):
                leftover.unlink(missing_ok=True)
        runner.submit(task.id)
        return JSONResponse(status_code=201, content=view(task), headers={"Location": f"/tasks/{task.id}"})

    @app.get("/tasks", response_model=TaskList, summary="Every task on this server, oldest first",
             responses=error_responses(400))
    def list_tasks(status: Literal["QUEUED", "RUNNING", "FINISHED", "FAILED"] | None = Query(
            None, description="only the tasks in this status")) -> dict[str, Any]:
        # A client that lost a Location header finds its task here, and an operator sees what is queued.
        views = (listed(task) for task in store.all() if status is None or task.status == status)
        return {"tasks": [shown for shown in views if shown is not None]}

    @app.get("/tasks/{task_id:path}", response_model=TaskView, summary="A task's status and progress",
             responses=error_responses(400, 404))
    def get_task(task_id: TaskId) -> dict[str, Any]:
        return view(store.get(check_task_id(task_id)))

    @app.delete("/tasks/{task_id:path}", status_code=204, summary="Stop a task and delete it with its results",
                responses=error_responses(400, 404))
    def delete_task(task_id: TaskId) -> Response:
        with suppress(DamagedTask):  # what cannot be read can still be removed, as its error advises
            store.get(check_task_id(task_id))
        runner.cancel(task_id)
        store.delete(task_id)
        summaries.pop(task_id, None)
        return Response(status_code=204)

    @app.get("/masks/{task_id:path}", summary="The stitched mask (8-bit PNG, 0/255, the image's size)",
             response_class=FileResponse, responses={**image_response("image/png"), **error_responses(400, 404, 409)})
    def get_mask(task_id: TaskId) -> FileResponse:
        task = store.get(check_task_id(task_id))
        # A task whose registration failed keeps the mask it made (its error says so).
        if not (task.status == FAILED and store.mask_png(task_id).is_file()):
            finished(task)
        return TaskFile(store.mask_png(task_id), media_type="image/png", filename=f"{task_id}-mask.png")

    def am_file(task_id: str, name: str) -> Path:
        # Known from the submission: a client told to wait would only learn it once the task finished.
        task = store.get(check_task_id(task_id))
        if not task.register:
            raise TaskNotReady(f"task {task_id} was submitted without rows and cols, so its marks are not "
                               "numbered; submit the image again with ?rows=R&cols=C")
        finished(task)
        path = store.layout(task_id).am_coords_dir(GROUP) / name
        if not path.is_file():
            # The log's path is the server's business (errors name no server folder): logged, not sent.
            log.error("task %s is FINISHED without its %s; its pipeline log is %s", task_id, name,
                      store.log_path(task_id))
            raise TaskNotReady(f"task {task_id} has no {name}; submit the image again")
        return path

    # Declared before /ams/{task_id}, which would otherwise take "<id>.csv" as the id.
    @app.get("/ams/{task_id:path}.csv", summary="The AM table: id,row,col,x,y,area_px",
             response_class=FileResponse,
             responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "AM table"},
                        **error_responses(400, 404, 409)})
    def get_am_table(task_id: TaskId) -> FileResponse:
        return TaskFile(am_file(task_id, "am_coordinates.csv"), media_type="text/csv",
                            filename=f"{task_id}-am_coordinates.csv")

    @app.get("/ams/{task_id:path}", summary="The AM id image (16-bit PNG: 0 background, id = row*cols + col + 1)",
             response_class=FileResponse, responses={**image_response("image/png"), **error_responses(400, 404, 409)})
    def get_am_image(task_id: TaskId) -> FileResponse:
        return TaskFile(am_file(task_id, "am_coordinates.png"), media_type="image/png",
                            filename=f"{task_id}-am_coordinates.png")

    def overlay_of(task: Task) -> tuple[Path, str]:
        """The overlay to send for ``task`` and which it is, or TaskNotReady saying why there is none."""
        layout = store.layout(task.id)
        registered = layout.am_coords_dir(GROUP) / OVERLAY_NAME
        segmented = layout.stitched_overlay(GROUP)
        if task.status == FAILED:
            # Registration removes an earlier one's outputs when it fails, and writes its record last:
            # with the record there, it succeeded and the run failed after it.
            if task.register and registered.is_file() and (layout.am_coords_dir(GROUP) / JSON_NAME).is_file():
                return registered, REGISTRATION_OVERLAY
            if segmented.is_file():
                return segmented, SEGMENTATION_OVERLAY
            raise TaskNotReady(f"task {task.id} failed before its image was segmented, so it has no overlay; "
                               f"it failed: {task.error}")
        finished(task)
        path, which = (registered, REGISTRATION_OVERLAY) if task.register else (segmented, SEGMENTATION_OVERLAY)
        if not path.is_file():
            log.error("task %s is FINISHED without its %s overlay %s", task.id, which, path)
            raise TaskNotReady(f"task {task.id} has no overlay; submit the image again")
        return path, which

    @app.get("/overlays/{task_id:path}", summary="The overlay to check: outlines and ids (or the mask drawn over "
             "the image without rows and cols, or when registration failed), PNG", description=OVERLAY_DESCRIPTION,
             response_class=FileResponse, responses={**overlay_response(), **error_responses(400, 404, 409)})
    def get_overlay(task_id: TaskId) -> FileResponse:
        path, which = overlay_of(store.get(check_task_id(task_id)))
        return TaskFile(path, media_type="image/png", filename=f"{task_id}-overlay.png",
                            headers={OVERLAY_HEADER: which})

    @app.get("/health", response_model=Health, summary="Liveness and queue counts",
             responses={503: {"model": Health, "description": "Tasks can no longer run; the reason says why"},
                        **error_responses(400)})
    def health() -> JSONResponse:
        # A dead runner thread leaves tasks QUEUED for ever: say so, so that a supervisor restarts the server.
        problem = runner.problem()
        body = Health(status="unhealthy" if problem else "ok", reason=problem, **runner.counts(),
                      concurrency=runner.concurrency)
        return JSONResponse(status_code=503 if problem else 200, content=body.model_dump())

    answer_head(app)
    install_openapi(app)
    return app


__all__ = ["OVERLAY_HEADER", "REGISTRATION_OVERLAY", "SEGMENTATION_OVERLAY", "TaskView", "create_app"]
