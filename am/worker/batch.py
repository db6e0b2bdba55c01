"""What happens to a message's tiles between the message and its report: fetch, infer, put.

A :class:`TileWork` is one message: the tiles of one object (:mod:`am.tilepack`). Each carries
its own outcome, so one corrupt or missing object fails alone while the rest of the batch
completes; only an inference error fails every message that shared the forward passes. A
missing bucket is no message's fault: it is raised, and stops the worker; so is an ``s3://`` model
not yet loaded whose bucket or object does not exist (:class:`~am.worker.models.MissingModel`).
Nor is S3 throttling or a lost connection that outlasts the retry policy: the transfer (or the
download of a model not yet loaded) is tried again, the message still held, for up to ``outage_s``
(:mod:`am.worker.outage`), and after that :class:`StorageOutage` is raised, which stops the worker
with its messages given back, their tiles not charged a failure; so is an endpoint whose certificate
the CA bundle does not verify (:class:`~am.transport.retry.UntrustedEndpoint`), at once.
A GPU whose context is lost (:func:`device_failure`) stops the worker too: every later call would fail.
Nothing here touches SQS: the worker decides what an outcome means for the message. ``fetch``
and ``put`` handle one message and run on the I/O pools of the prefetch and upload stages;
``infer`` handles a whole batch of messages on the compute thread, in model calls of
``tiles_per_call`` tiles across message boundaries, and says when each returns (``call_returned``),
so a watchdog can time one call, not a batch of messages of up to 256 tiles each::

    steps = TileSteps(storage, models, input_bucket="in", output_bucket="out", clock=StageClock())
    for work in batch: steps.fetch(work)      # download + unpack the tiles
    steps.infer(batch)                        # forward passes per (model, tile shape)
    for work in batch: steps.put(work)        # pack + upload the masks
    done = [w for w in batch if w.ok]
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from am.errors import AmError, InputError, MissingBucket, WorkerError
from am.messages import TileMessage, model_in_tile_bucket
from am.tilepack import pack_masks, unpack_tiles
from am.transport.queue import Received
from am.transport.retry import UntrustedEndpoint
from am.transport.storage import Storage
from am.worker.config import DEFAULT_OUTAGE_PATIENCE_S
from am.worker.models import MissingModel, Predictor
from am.worker.outage import StorageOutage, TransferAbandoned, patiently
from am.worker.timing import StageClock

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors travel back in a TileResult and into the orchestrator's summary: keep them short.
MAX_ERROR_CHARS = 300
# Raised, not charged to a message: no tile's fault, so they stop the worker with its messages given back.
# An untrusted endpoint (a CA bundle that does not hold the endpoint's CA, or cannot be read) fails every
# transfer alike and no wait fixes it.
NO_TILES_FAULT: tuple[type[BaseException], ...] = (StorageOutage, UntrustedEndpoint)


def device_failure(exc: BaseException) -> WorkerError | None:
    """The worker's own failure where ``exc`` says the GPU's context is lost (None: the tiles' failure).

    After an illegal memory access, a launch failure or an ECC error every later call on the device
    fails too: charged to the tiles, each would go on failing batch after batch until the queue
    drained into the dead-letter queue. Raised instead, it stops this worker with its messages given
    back, as a hung call does, for workers whose device works. torch reports these as
    ``torch.AcceleratorError`` (2.8 and later) or a RuntimeError "CUDA error: ..." (before); running
    out of memory is the batch's own failure and stays one. Named, not imported: no torch here.
    """
    if not isinstance(exc, RuntimeError) or "out of memory" in str(exc).lower():
        return None
    accelerator = any(cls.__name__ == "AcceleratorError" and cls.__module__.startswith("torch")
                      for cls in type(exc).__mro__)
    if not (accelerator or str(exc).startswith("CUDA error")):
        return None
    return WorkerError(f"the GPU failed and cannot be used again by this process ({type(exc).__name__}: "
                       f"{str(exc)[:MAX_ERROR_CHARS]}): giving every held message back and exiting")


@dataclass
class TileWork:
    """A message in flight, with whatever has happened to its tiles so far (``(n, h, w)`` arrays)."""

    received: Received
    message: TileMessage
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    error: str = ""
    compute_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def count(self) -> int:
        """Tiles the message carries."""
        return len(self.message.tiles)

    def fail(self, reason: str) -> None:
        if not self.error:
            self.error = reason[:MAX_ERROR_CHARS]


class TileSteps:
    """The three steps of a tile; thread-safe as long as ``storage`` and the predictors' callers are."""

    def __init__(
        self,
        storage: Storage,
        predictor_for: Callable[[str], Predictor],
        *,
        input_bucket: str,
        output_bucket: str,
        clock: StageClock,
        timer: Callable[[], float] = time.perf_counter,
        tiles_per_call: int = 0,
        call_returned: Callable[[], None] | None = None,
        outage_s: float = DEFAULT_OUTAGE_PATIENCE_S,
        abandoned: threading.Event | None = None,
    ) -> None:
        if tiles_per_call < 0:
            raise WorkerError(f"tiles per model call must be >= 0 (0: a group's tiles in one call), "
                              f"got {tiles_per_call}")
        if not outage_s >= 0:
            raise WorkerError(f"patience with an S3 outage must be >= 0 s, got {outage_s}")
        self._storage = storage
        self._predictor_for = predictor_for
        self._input_bucket = input_bucket
        self._output_bucket = output_bucket
        self._clock = clock
        self._timer = timer
        self._tiles_per_call = tiles_per_call
        self._call_returned = call_returned
        self._outage_s = outage_s
        # Set when the worker no longer holds the messages (released, aborted, exiting): an outage
        # retry then ends at once instead of keeping a thread busy for a message given away.
        self._abandoned = abandoned if abandoned is not None else threading.Event()

    def fetch(self, tile: TileWork) -> None:
        """Download and unpack the message's tiles; an AmError fails the message, anything else is raised.

        A missing bucket is raised too: every tile of it would fail the same way, on every receive,
        until the whole queue sat in the dead-letter queue.
        """
        key = tile.message.input
        try:
            with self._clock.timing("download"):
                data = self._patiently(f"download of s3://{self._input_bucket}/{key}",
                                       lambda: self._storage.get_bytes(self._input_bucket, key))
            with self._clock.timing("decode"):
                tile.image = unpack_tiles(data, count=tile.count, name=f"s3://{self._input_bucket}/{key}")
            _check_extent(tile.message, tile.image.shape, name=f"s3://{self._input_bucket}/{key}")
        except MissingBucket as exc:
            raise MissingBucket(f"the input bucket (AM_INPUT_BUCKET) is gone: {exc}") from exc
        except NO_TILES_FAULT:
            raise
        except AmError as exc:
            tile.fail(f"input: {exc}")

    def infer(self, tiles: list[TileWork]) -> None:
        """Masks for every decoded tile, one forward pass per group of tiles sharing model, TTA and shape."""
        for group in _groups(t for t in tiles if t.ok):
            self._infer(group)

    def put(self, tile: TileWork) -> None:
        """Pack and write the message's masks (same arrays, same bytes); does nothing for a failed message.

        A missing bucket is raised, not charged to the message, as in :meth:`fetch`.
        """
        if not tile.ok:
            return
        if tile.mask is None:
            tile.fail("no mask was produced for these tiles")
            return
        try:
            with self._clock.timing("encode"):
                data = pack_masks(tile.mask)
            tile.mask = None
            with self._clock.timing("upload"):
                self._patiently(f"upload of s3://{self._output_bucket}/{tile.message.output}",
                                lambda: self._storage.put_bytes(self._output_bucket, tile.message.output, data))
        except MissingBucket as exc:
            raise MissingBucket(f"the output bucket (AM_OUTPUT_BUCKET) is gone: {exc}") from exc
        except NO_TILES_FAULT:
            raise
        except AmError as exc:
            tile.fail(f"output: {exc}")

    def _patiently(self, what: str, transfer: Callable[[], T]) -> T:
        """``transfer`` under the worker's patience with an outage (:func:`am.worker.outage.patiently`),
        abandoned once the worker has let its messages go."""
        return patiently(what, transfer, outage_s=self._outage_s, wait=self._abandoned.wait)

    def _outage_pause(self, seconds: float) -> bool:
        """A pause between two rounds of an outage met while loading a model, on the compute thread.

        The hung-device watch (``call_returned``) times that thread, and a wait for S3 is no stuck
        model call: each round starts its clock again, so AM_OUTAGE_PATIENCE_S, not AM_MAX_BATCH_S,
        decides when the worker gives up, with the outage named as the cause.
        """
        if self._call_returned is not None:
            self._call_returned()
        return self._abandoned.wait(seconds)

    def _infer(self, group: list[TileWork]) -> None:
        model, tta = group[0].message.model, group[0].message.tta
        if problem := model_in_tile_bucket(model, input_bucket=self._input_bucket, output_bucket=self._output_bucket):
            log.error("not loading model %s for %d tile(s): %s", model, len(group), problem)
            for tile in group:
                tile.fail(f"model {model}: {problem}")
            return
        try:
            # Loading an s3:// model not yet in memory downloads it: an outage is waited out as for a tile.
            predictor = patiently(f"download of model {model}", lambda: self._predictor_for(model),
                                  outage_s=self._outage_s, wait=self._outage_pause)
        except (MissingModel, *NO_TILES_FAULT):
            # Every tile naming it would fail alike, on every receive: raised, it stops the worker
            # with the messages given back instead of moving them all to the dead-letter queue.
            raise
        # Also torch's device and memory failures (RuntimeError; CUDA out of memory among them) and a
        # full cache disk (OSError); anything else is a bug, which stops the worker.
        except (AmError, RuntimeError, OSError) as exc:
            if broken := device_failure(exc):
                raise broken from exc
            why = str(exc) if isinstance(exc, AmError) else f"{type(exc).__name__}: {exc}"
            log.error("cannot load model %s for %d tile(s): %s", model, len(group), why)
            for tile in group:
                tile.fail(f"model {model}: {why}")
            return
        batch = np.concatenate([t.image for t in group if t.image is not None])
        # Per tile, the part that is image (None: all of it), from its message.
        extents = [t.message.valid for t in group if t.image is not None for _ in range(t.count)]
        masks = np.empty_like(batch)
        per_call = self._tiles_per_call or len(batch)
        elapsed = 0.0
        try:
            for first in range(0, len(batch), per_call):
                chunk = batch[first:first + per_call]
                valid = extents[first:first + per_call]
                # Only calls with a padded tile name extents: predictors without the parameter still serve whole tiles.
                extra = {"valid": valid} if any(extent is not None for extent in valid) else {}
                start = self._timer()
                part = predictor.predict(chunk, tta=tta, **extra)
                took = self._timer() - start
                if part.shape != chunk.shape:
                    raise AmError(f"model returned masks of shape {part.shape} for tiles of shape {chunk.shape}")
                masks[first:first + len(chunk)] = part
                self._record(predictor, took)
                elapsed += took
                if self._call_returned is not None:
                    self._call_returned()
        except Exception as exc:  # torch reports device and memory failures as RuntimeError and kin
            if broken := device_failure(exc):
                raise broken from exc
            log.exception("inference failed for %d tile(s) of shape %s with model %s", len(group), batch.shape[1:],
                          model)
            for tile in group:
                tile.fail(f"inference: {type(exc).__name__}: {exc}")
            return
        per_tile = elapsed / len(batch)
        start = 0
        for tile in group:
            tile.compute_s = per_tile * tile.count
            tile.image = None
            tile.mask = masks[start:start + tile.count]
            start += tile.count

    def _record(self, predictor: Predictor, elapsed: float) -> None:
        """Split the call into H2D, compute and D2H when the predictor says how (am.model's does)."""
        times = getattr(predictor, "last_times", None)
        if times is None:
            self._clock.add("compute", elapsed)
            return
        self._clock.add("h2d", times.h2d)
        self._clock.add("compute", max(0.0, elapsed - times.h2d - times.d2h))
        self._clock.add("d2h", times.d2h)


def _check_extent(message: TileMessage, shape: tuple[int, ...], *, name: str) -> None:
    """Refuse a message whose image extent (``valid``) does not fit its tiles: it was not cut for them."""
    if message.valid is None:
        return
    rows, cols = message.valid
    if rows > shape[1] or cols > shape[2]:
        raise InputError(f"{name}: the message's image extent {rows}x{cols} (field 'valid') is larger than its "
                         f"{shape[1]}x{shape[2]} tiles, so it was not made for them; rerun the job to cut and send "
                         "them again")


def _groups(tiles: Iterable[TileWork]) -> list[list[TileWork]]:
    """Messages whose tiles can share forward passes: same model, same test-time augmentation, same tile shape."""
    groups: dict[tuple[str, str, tuple[int, ...]], list[TileWork]] = defaultdict(list)
    for tile in tiles:
        if tile.image is not None:
            groups[(tile.message.model, tile.message.tta, tile.image.shape[1:])].append(tile)
    return list(groups.values())


__all__ = ["MAX_ERROR_CHARS", "NO_TILES_FAULT", "StorageOutage", "TileSteps", "TileWork", "TransferAbandoned"]
