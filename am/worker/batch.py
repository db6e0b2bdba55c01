"""One batch of tiles through the model: download, decode, predict, encode, upload.

Each tile carries its own outcome, so one corrupt or missing tile fails alone while the rest
of the batch completes; only an inference error fails every tile that shared the forward
pass. Nothing here touches SQS: the worker decides what an outcome means for the message::

    tiles = [TileWork(received, message) for ...]
    BatchProcessor(storage, models, input_bucket="in", output_bucket="out", pool=pool).process(tiles)
    done = [t for t in tiles if t.ok]
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from am.errors import AmError
from am.imageio import decode_png, encode_png
from am.messages import TileMessage
from am.transport.queue import Received
from am.transport.storage import Storage
from am.worker.models import Predictor

log = logging.getLogger(__name__)

# Errors travel back in a TileResult and into the orchestrator's summary: keep them short.
MAX_ERROR_CHARS = 300


@dataclass
class TileWork:
    """A tile in flight: its message, and whatever has happened to it so far."""

    received: Received
    message: TileMessage
    image: np.ndarray | None = None
    mask_png: bytes | None = None
    error: str = ""
    compute_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error

    def fail(self, reason: str) -> None:
        if not self.error:
            self.error = reason[:MAX_ERROR_CHARS]


class BatchProcessor:
    """Turns input tiles into uploaded masks; transfers run on ``pool``, inference on the calling thread."""

    def __init__(
        self,
        storage: Storage,
        predictor_for: Callable[[str], Predictor],
        *,
        input_bucket: str,
        output_bucket: str,
        pool: Executor,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._storage = storage
        self._predictor_for = predictor_for
        self._input_bucket = input_bucket
        self._output_bucket = output_bucket
        self._pool = pool
        self._clock = clock

    def process(self, tiles: list[TileWork]) -> None:
        """Run every step; afterwards each tile is either ``ok`` (mask uploaded) or has an ``error``."""
        self._download(tiles)
        for group in _groups(t for t in tiles if t.ok):
            self._infer(group)
        self._upload([t for t in tiles if t.ok])

    def _download(self, tiles: list[TileWork]) -> None:
        def fetch(tile: TileWork) -> None:
            key = tile.message.input
            try:
                data = self._storage.get_bytes(self._input_bucket, key)
                tile.image = decode_png(data, name=f"s3://{self._input_bucket}/{key}")
            except AmError as exc:
                tile.fail(f"input: {exc}")

        list(self._pool.map(fetch, tiles))

    def _infer(self, group: list[TileWork]) -> None:
        model = group[0].message.model
        try:
            predictor = self._predictor_for(model)
        except AmError as exc:
            log.error("cannot load model %s for %d tile(s): %s", model, len(group), exc)
            for tile in group:
                tile.fail(f"model {model}: {exc}")
            return
        batch = np.stack([t.image for t in group if t.image is not None])
        start = self._clock()
        try:
            masks = predictor.predict(batch)
            if masks.shape != batch.shape:
                raise AmError(f"model returned masks of shape {masks.shape} for tiles of shape {batch.shape}")
        except Exception as exc:  # torch reports device and memory failures as RuntimeError and kin
            log.exception("inference failed for %d tile(s) of shape %s with model %s", len(group), batch.shape[1:],
                          model)
            for tile in group:
                tile.fail(f"inference: {type(exc).__name__}: {exc}")
            return
        share = (self._clock() - start) / len(group)
        for tile, mask in zip(group, masks, strict=True):
            tile.compute_s = share
            tile.image = None
            try:
                tile.mask_png = encode_png(np.ascontiguousarray(mask, dtype=np.uint8))
            except AmError as exc:
                tile.fail(f"encode: {exc}")

    def _upload(self, tiles: list[TileWork]) -> None:
        def put(tile: TileWork) -> None:
            if tile.mask_png is None:
                tile.fail("no mask was produced for this tile")
                return
            try:
                self._storage.put_bytes(self._output_bucket, tile.message.output, tile.mask_png)
            except AmError as exc:
                tile.fail(f"output: {exc}")

        list(self._pool.map(put, tiles))


def _groups(tiles: Iterable[TileWork]) -> list[list[TileWork]]:
    """Decoded tiles that can share a forward pass: same model, same shape."""
    groups: dict[tuple[str, tuple[int, ...]], list[TileWork]] = defaultdict(list)
    for tile in tiles:
        if tile.image is not None:
            groups[(tile.message.model, tile.image.shape)].append(tile)
    return list(groups.values())


__all__ = ["MAX_ERROR_CHARS", "BatchProcessor", "TileWork"]
