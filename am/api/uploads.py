"""Image uploads over HTTP: media types, a size-capped body reader and a decode check.

Shared by the task API and the SageMaker contract, so both accept and refuse the same bodies.
A body is streamed to a temporary file while its bytes are counted (a client may send no
Content-Length, or a false one). Its header is then read, and an image whose pixels would take
more memory than the server allows is refused before a pixel is decoded: a compressed TIFF of
a few hundred kilobytes can declare gigabytes of zeros. Only then is it decoded with
:func:`am.imageio.read_image`, so a request with an unreadable image is refused at once instead
of failing later in a task. A colour image becomes grey over its own pixels' memory
(:func:`grey_in_place`), so what the header check counts is what checking it, or loading it to segment,
holds (segmenting then takes its own working memory)::

    kind = media_kind(request.headers.get("content-type"), accepted=TASK_MEDIA_TYPES)
    await receive_request_body(request, target, max_bytes=limit)
    path = check_image(target, kind=kind, max_bytes=limit)    # decodes, keeps no pixels
    grey = load_grey(target, kind=kind, max_bytes=limit)      # or: its grey pixels, to segment them

Work done in a thread for a request (decoding, segmenting) goes through :func:`finish_in_thread`,
so that a server told to stop finishes and answers what it has started instead of cutting it off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import anyio
import numpy as np
from starlette.requests import ClientDisconnect, Request

from am.errors import AmError, InputError
from am.imageio import PNG_SIGNATURE, TIFF_SIGNATURES, ImageHeader, check_complete, read_header, read_image
from am.normalize import check_finite, check_not_blank, to_grey
from am.prepare import MIN_IMAGE_SIDE_PX, scaled_size

log = logging.getLogger(__name__)

T = TypeVar("T")

# Default cap on one upload: a 20000 x 20000 16-bit scan compresses to well under this.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# Decoded pixels may take at most this many bytes per byte of the body limit (2 GiB at the default
# limit: a 20000 x 20000 RGB or RGBA 8-bit scan, or 16-bit grey). Microscopy compresses about 2:1,
# so an image that fits the body limit fits this; only mostly-empty or crafted files expand more.
DECODED_BYTES_PER_BODY_BYTE = 8

PNG = "png"
TIFF = "tiff"
SNIFF = "sniff"
# Pixels made grey at a time by grey_in_place: to_grey's float32 temporaries (16 bytes per RGB pixel) then
# stay near 1 MiB however large the image, instead of 64 MiB, or 5 times a small image's own pixels.
GREY_BLOCK_PIXELS = 1 << 16

# Media type (lower case, without parameters) -> what the body must be. "sniff" means either,
# told apart by the file signature (SageMaker's application/x-image names no format).
TASK_MEDIA_TYPES: Mapping[str, str] = {"image/png": PNG, "image/tiff": TIFF}
INVOCATION_MEDIA_TYPES: Mapping[str, str] = {"image/png": PNG, "image/tiff": TIFF, "application/x-image": SNIFF}

SUFFIXES = {PNG: ".png", TIFF: ".tiff"}
# What messages call the upload: its temporary file's name means nothing to the client.
UPLOADED = "the uploaded image"
# Advice in the pipeline's messages that only a command-line user can follow: an upload is one image,
# not a group of a dataset.
PIPELINE_ONLY_ADVICE = (", or leave the group out",)
STOPPING = "the server is stopping; send the image again once it is back"


class UnsupportedMediaType(InputError):
    """The request's Content-Type is missing or not one the endpoint takes (HTTP 415)."""


class ServerStopping(AmError):
    """The server was told to stop while an upload came in: answered 503, so the client sends it again."""


class BodyTooLarge(InputError):
    """The request body is larger than the server accepts (HTTP 413)."""


class ImageTooLarge(BodyTooLarge):
    """The uploaded image would take more memory to decode than the server allows (HTTP 413)."""


# What to do instead of a form upload (curl -F), which wraps the image in a multipart body.
RAW_BODY_HINT = ("send the image file itself as the body, e.g. curl --data-binary @image.png "
                 "-H 'Content-Type: image/png'")


def media_kind(content_type: str | None, *, accepted: Mapping[str, str]) -> str:
    """The body kind for a Content-Type header (parameters such as ``; charset=`` are ignored)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in accepted:
        shown = repr(media) if media else "none"
        form = f" ({RAW_BODY_HINT})" if media == "multipart/form-data" else ""
        raise UnsupportedMediaType(
            f"Content-Type {shown} is not accepted; send the image with Content-Type "
            f"{' or '.join(sorted(accepted))}{form}"
        )
    return accepted[media]


def declared_length(value: str | None, *, max_bytes: int) -> int | None:
    """Content-Length as a number, refusing an oversized body before any of it is read."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InputError(f"Content-Length {value!r} is not a number of bytes") from None
    if length < 0:
        raise InputError(f"Content-Length {length} is negative")
    if length > max_bytes:
        raise BodyTooLarge(_too_large(length, max_bytes))
    return length


async def receive_body(chunks: AsyncIterator[bytes], target: Path, *, max_bytes: int) -> int:
    """Write the streamed body to ``target``, stopping with BodyTooLarge once it passes ``max_bytes``."""
    size = 0
    try:
        with open(target, "xb") as handle:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise BodyTooLarge(_too_large(size, max_bytes, at_least=True))
                handle.write(chunk)
    except OSError as exc:
        # A full disk (or ulimit -f) names no file when a write fails: the server's log should.
        exc.filename = exc.filename or str(target)
        raise
    if size == 0:
        raise InputError("the request body is empty; send the image file as the body")
    return size


async def receive_request_body(request: Request, target: Path, *, max_bytes: int) -> int:
    """:func:`receive_body` for a request: a client that hangs up midway is an InputError logged at
    INFO (nobody reads the answer), not an application error with a traceback in the server's log.

    Where the app knows when its server stops (``app.state.stopping``, set by :func:`am.api.listen.serve`),
    an upload still coming in then ends with :class:`ServerStopping` (503) at its next chunk, within the
    server's grace period, instead of being cut off by the server with a plain-text 500.
    """
    stopping = getattr(request.app.state, "stopping", None)
    chunks = request.stream() if stopping is None else _until_stopping(request.stream(), stopping)
    try:
        return await receive_body(chunks, target, max_bytes=max_bytes)
    except ClientDisconnect:
        log.info("an upload was cut off: the client disconnected")
        raise InputError("the client disconnected before the whole image was sent") from None
    except asyncio.CancelledError:
        # uvicorn cancels what still runs once its graceful-shutdown period is over: a client that
        # stalled mid-upload gets the 503 of any upload the stop interrupted, not a plain-text 500.
        if stopping is None or not stopping():
            raise
        _uncancel()
        log.info("an upload was refused: the server stopped while the client was still to send the rest")
        raise ServerStopping(STOPPING) from None


async def _until_stopping(chunks: AsyncIterator[bytes], stopping: Callable[[], bool]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if stopping():
            log.info("an upload was refused: the server is stopping")
            raise ServerStopping(STOPPING)
        yield chunk


def _uncancel() -> None:
    """Take back the cancellation this task is handling, so that it may go on and answer."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def finish_in_thread(func: Callable[[], T], *, limiter: anyio.CapacityLimiter | None = None) -> T:
    """``func()`` in a worker thread, once ``limiter`` lets it, its result returned even if the request is
    cancelled while it runs.

    uvicorn cancels the requests still running when its graceful-shutdown period ends, and asyncio
    cancels every task left when the server's loop closes; a thread cannot be stopped, and the process
    waits for it anyway. So work that started (a record being segmented, an upload being checked) is
    finished and answered, as a client of a server being scaled in wants, instead of ending in a
    plain-text 500 and a traceback. The thread's result is a future, not a task, so that no
    cancellation reaches it. Work still waiting for ``limiter`` is dropped and answered 503
    (:class:`ServerStopping`), for the client to send again.
    """
    if limiter is not None:
        try:
            await limiter.acquire()
        except asyncio.CancelledError:
            _uncancel()
            log.info("a request was refused: the server is stopping, and its work had not started")
            raise ServerStopping(STOPPING) from None
    try:
        work = asyncio.get_running_loop().run_in_executor(None, func)
        told = False
        while True:
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                if work.cancelled():
                    raise
                _uncancel()
                if not told:
                    log.info("the server is stopping: finishing the request in progress before it stops")
                    told = True
    finally:
        if limiter is not None:
            limiter.release()


def sniff_kind(target: Path, *, kind: str) -> str:
    """PNG or TIFF from the file signature; refuses a body that is not the declared format."""
    with open(target, "rb") as handle:
        head = handle.read(8)
    found = PNG if head.startswith(PNG_SIGNATURE) else TIFF if head[:4] in TIFF_SIGNATURES else None
    if found is None:
        if head.startswith(b"--"):  # a multipart boundary: curl -F wraps the file in a form
            raise InputError(f"the request body is a multipart form, not an image; {RAW_BODY_HINT}")
        raise InputError("the request body is neither a PNG nor a TIFF image (unknown file signature)")
    if kind != SNIFF and found != kind:
        raise InputError(f"the request body is a {found.upper()} image but Content-Type says {kind.upper()}; "
                         f"send it with Content-Type image/{found}")
    return found


def decoded_limit(max_bytes: int) -> int:
    """The most bytes of decoded pixels a server with body limit ``max_bytes`` decodes for one image.

    What the header says reading takes (:attr:`am.imageio.ImageHeader.decoded_bytes`) is what checking or
    loading an upload holds, but for about 2 MiB of working memory: colour is made grey in place.
    """
    return max_bytes * DECODED_BYTES_PER_BODY_BYTE


def check_image(target: Path, *, kind: str, max_bytes: int, scale: float = 1.0) -> Path:
    """Check that the upload is an image the server may decode and that it decodes; returns it renamed.

    For the task API: the pipeline decodes the image again in its own process, so the pixels
    are dropped here as soon as they have decoded. Raises ImageTooLarge (before decoding) or
    InputError (naming the problem) otherwise. ``scale`` is the server's (1 for ``auto``, as the
    pipeline checks it): the size is checked as the model will see the image, so that the client
    gets a 400, not a task that fails.
    """
    named = _accepted(target, kind=kind, max_bytes=max_bytes)
    grey = grey_in_place(_decode(named), name=UPLOADED)
    height, width = grey.shape
    # The pipeline refuses NaN or inf pixels, too small an image and a blank one: said now, not as a failed task.
    check_finite(grey, UPLOADED)
    seen_height, seen_width = scaled_size(height, width, scale)
    if min(seen_height, seen_width) < MIN_IMAGE_SIDE_PX:
        at_scale = "" if scale == 1.0 else f", {seen_height} x {seen_width} px at this server's scale {scale:g}"
        raise InputError(f"the uploaded image is {height} x {width} px (height x width{at_scale}); the model needs "
                         f"at least {MIN_IMAGE_SIDE_PX} px on each side: send a larger crop of the acquisition")
    try:
        check_not_blank(grey, UPLOADED)
    except InputError as exc:
        raise InputError(without_pipeline_advice(str(exc))) from exc
    return named


def without_pipeline_advice(message: str) -> str:
    """A pipeline's message without the advice only its command line can follow (:data:`PIPELINE_ONLY_ADVICE`)."""
    for advice in PIPELINE_ONLY_ADVICE:
        message = message.replace(advice, "")
    return message


def load_grey(target: Path, *, kind: str, max_bytes: int) -> np.ndarray:
    """The upload's pixels as 2-D grey (:func:`grey_in_place`), after the checks :func:`check_image` makes
    before decoding (for segmenting in this process)."""
    return grey_in_place(_decode(_accepted(target, kind=kind, max_bytes=max_bytes)), name=UPLOADED)


def grey_in_place(image: np.ndarray, *, name: str) -> np.ndarray:
    """:func:`am.normalize.to_grey` of ``image``, written over the start of a colour image's own memory.

    The header check counts the decoded pixels only (:func:`decoded_limit`); a grey copy beside them
    would add a third of an RGB image, and to_grey's float32 temporaries five times a small one. Here
    the colour pixels are made grey :data:`GREY_BLOCK_PIXELS` at a time, and each block of grey rows lands
    before any colour row still to be read: a grey pixel never takes more bytes than a colour one. The
    result is a view of ``image``'s memory, which must no longer be used as colour. An image that is not one
    array of its own that may be written (never the case for :func:`am.imageio.read_image`'s) is copied.
    """
    if image.ndim != 3 or image.shape[2] == 1:
        return to_grey(image, name=name)
    height, width = image.shape[:2]
    step = max(1, GREY_BLOCK_PIXELS // max(1, width))
    first = to_grey(image[:step], name=name)  # its type, and a shape or pixel type to_grey refuses
    if not (image.flags.c_contiguous and image.flags.writeable) or first.itemsize > image.itemsize * image.shape[2]:
        log.debug("%s: %s %s array made grey as a copy", name, image.shape, image.dtype)
        return to_grey(image, name=name)
    grey = image.reshape(-1).view(np.uint8)[: height * width * first.itemsize].view(first.dtype)
    grey = grey.reshape(height, width)
    grey[: first.shape[0]] = first
    del first
    for start in range(step, height, step):
        grey[start:start + step] = to_grey(image[start:start + step], name=name)
    return grey


def _accepted(target: Path, *, kind: str, max_bytes: int) -> Path:
    """Rename the upload to its format's suffix and check from its header that it may be decoded."""
    found = sniff_kind(target, kind=kind)
    named = target.with_suffix(SUFFIXES[found])
    target.rename(named)
    header = _uploaded(named, read_header)
    limit = decoded_limit(max_bytes)
    if header.decoded_bytes > limit:
        raise ImageTooLarge(
            f"the uploaded image is {_described(header)}: {header.decoded_bytes} bytes once decoded, above this "
            f"server's limit of {limit} bytes of pixels per image ({DECODED_BYTES_PER_BODY_BYTE} times its "
            f"{max_bytes}-byte body limit); send a smaller image (crop or split it), or start the server with a "
            "larger --max-bytes"
        )
    return named


def _decode(named: Path) -> np.ndarray:
    # Says where a cut or damaged upload goes wrong; the decoder would only say that it failed.
    _uploaded(named, check_complete)
    image = _uploaded(named, read_image)
    log.debug("upload %s decodes to %s %s", named.name, image.shape, image.dtype)
    return image


def _uploaded(named: Path, read: Callable[[Path], T]) -> T:
    """``read(named)``, with the temporary file's name, which means nothing to the client, out of errors."""
    try:
        return read(named)
    except InputError as exc:
        raise InputError(str(exc).replace(f"image {named}", UPLOADED).replace(str(named), UPLOADED)) from exc


def _described(header: ImageHeader) -> str:
    pages = f", {header.pages} pages" if header.pages > 1 else ""
    read_as = f", read as {header.read_as}" if header.read_as else ""
    return (f"{header.width} x {header.height} pixels with {header.channels} channel(s) of {header.dtype}"
            f"{read_as}{pages}")


def _too_large(size: int, max_bytes: int, *, at_least: bool = False) -> str:
    amount = f"more than {max_bytes}" if at_least else str(size)
    return (f"the request body is {amount} bytes, above this server's limit of {max_bytes} bytes; "
            "send a smaller image (crop or split it), or start the server with a larger --max-bytes")


__all__ = [
    "DECODED_BYTES_PER_BODY_BYTE",
    "DEFAULT_MAX_BYTES",
    "INVOCATION_MEDIA_TYPES",
    "TASK_MEDIA_TYPES",
    "BodyTooLarge",
    "ImageTooLarge",
    "ServerStopping",
    "UnsupportedMediaType",
    "check_image",
    "declared_length",
    "decoded_limit",
    "finish_in_thread",
    "grey_in_place",
    "load_grey",
    "media_kind",
    "receive_body",
    "receive_request_body",
    "sniff_kind",
    "without_pipeline_advice",
]
