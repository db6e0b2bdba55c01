"""The SageMaker serving contract: ``GET /ping`` and ``POST /invocations`` (image in, mask PNG out).

SageMaker (real-time endpoints and batch transform alike) sends one record per request to
``/invocations`` and checks health with ``/ping``. A record here is one image, a whole scan
or one tile, as ``image/png``, ``image/tiff`` or ``application/x-image`` (either, told apart
by its signature); the answer is its 0/255 mask as an 8-bit PNG of the same size. Refusals
are JSON ``{"detail": ...}``: 415 for another Content-Type, 400 for a body that does not
decode, 413 above ``max_bytes`` or for an image whose header declares more pixels than
:func:`am.api.uploads.decoded_limit` allows, 507 when the record cannot be stored for want of room.
A blank record (every pixel within one grey level: a tile of background) is no error here, unlike in the task
API: its mask is all 0, made without the model. A record being segmented when the server is told
to stop is finished and answered (:func:`am.api.uploads.finish_in_thread`)::

    app = create_app(ImageSegmenter(predictor), max_bytes=DEFAULT_MAX_BYTES)
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response

from am.api.errors import install_error_handler
from am.api.head import answer_head
from am.api.openapi import error_responses, image_body, image_response, install_openapi, offline_docs_app
from am.api.uploads import (
    DEFAULT_MAX_BYTES,
    INVOCATION_MEDIA_TYPES,
    BodyTooLarge,
    ServerStopping,
    UnsupportedMediaType,
    declared_length,
    finish_in_thread,
    load_grey,
    media_kind,
    receive_request_body,
)
from am.errors import AmError, InputError
from am.imageio import encode_png
from am.serve.segment import ImageSegmenter

log = logging.getLogger(__name__)

# SageMaker's own cap on one batch-transform record is 100 MB (MaxPayloadInMB).
SAGEMAKER_MAX_PAYLOAD_MB = 100
MIB = 1024 * 1024  # SageMaker's "MB" of MaxPayloadInMB


ERROR_STATUSES: tuple[tuple[type[AmError], int], ...] = (
    (UnsupportedMediaType, 415), (BodyTooLarge, 413), (InputError, 400), (ServerStopping, 503))


def create_app(segmenter: ImageSegmenter, *, max_bytes: int = DEFAULT_MAX_BYTES) -> FastAPI:
    """The ASGI app. Inference runs one request at a time: the model already uses every core or the GPU."""
    model_lock = anyio.CapacityLimiter(1)
    app = offline_docs_app(title="am-segm SageMaker inference", version="1",
                           description="The SageMaker container contract: /ping and /invocations.")

    install_error_handler(app, ERROR_STATUSES)

    @app.get("/ping", summary="Health check: 200 once the model is loaded; says where and in what precision it runs")
    def ping() -> dict[str, str]:
        return {"status": "ok", "device": segmenter.predictor.device, "precision": segmenter.predictor.precision}

    @app.get("/execution-parameters", summary="Batch transform defaults SageMaker asks the container for")
    def execution_parameters() -> dict[str, Any]:
        return {"MaxConcurrentTransforms": 1, "BatchStrategy": "SINGLE_RECORD",
                "MaxPayloadInMB": min(SAGEMAKER_MAX_PAYLOAD_MB, max(1, max_bytes // MIB))}

    @app.post(
        "/invocations",
        summary="Segment one image (at least 32 px on each side); the answer is its mask (8-bit PNG, 0/255, same size)",
        response_class=Response,
        responses={**image_response("image/png"), **error_responses(400, 413, 415, 503, 507)},
        openapi_extra=image_body(INVOCATION_MEDIA_TYPES),
    )
    async def invocations(request: Request) -> Response:
        kind = media_kind(request.headers.get("content-type"), accepted=INVOCATION_MEDIA_TYPES)
        declared_length(request.headers.get("content-length"), max_bytes=max_bytes)
        with tempfile.TemporaryDirectory(prefix="am-serve-") as folder:
            part = Path(folder) / "record.part"
            await receive_request_body(request, part, max_bytes=max_bytes)

            def run() -> bytes:
                # The header is checked before decoding, so a small body cannot make this process decode
                # gigabytes; the pixels are freed as soon as the mask is made.
                mask = segmenter.segment(load_grey(part, kind=kind, max_bytes=max_bytes), name="the record")
                return encode_png(mask)

            # A record the model started on is finished and answered, even if the server is told to stop.
            body = await finish_in_thread(run, limiter=model_lock)
        return Response(content=body, media_type="image/png")

    answer_head(app)
    install_openapi(app)
    return app


__all__ = ["MIB", "create_app"]
