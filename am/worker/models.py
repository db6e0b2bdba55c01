"""Models by URI for the worker: load once, keep the last few, download ``s3://`` checkpoints once.

Messages name the model that must segment their tile, so a worker started for one model can
still serve a job that asked for another. Loading a U-Net takes seconds and a GPU holds only
so many, hence a small least-recently-used cache. An ``s3://`` checkpoint may be replaced under
its key (``make upload-model`` always writes the stack's ModelUri) while a worker is still up
between jobs, so its version is looked up again (a HeadObject) at most every
``MODEL_RECHECK_S``, and a new version is loaded in place of the one it replaced. A look-up that
fails (S3 throttling, a refusal, the network) leaves a loaded version serving, with a warning. A
model not in memory whose bucket or object does not exist is a :class:`MissingModel`: no tile's
fault, so the worker stops on it instead of failing every tile that names it::

    models = ModelCache(lambda path: Predictor.from_checkpoint(path), storage=storage, cache_dir=tmp)
    masks = models("s3://models/unet.pt").predict(tiles)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from am.errors import MissingBucket, MissingObject, TransportError, WorkerError
from am.transport.storage import Storage

log = logging.getLogger(__name__)

# Two models cover a job changing models while another job still runs; more would crowd a GPU.
DEFAULT_CAPACITY = 2
# How long an s3:// model's version is trusted before it is looked up again: a job starts seconds
# after its model was uploaded, and a batch takes far longer than the one HeadObject per interval.
MODEL_RECHECK_S = 5.0


class Predictor(Protocol):
    """What the worker needs of a model: 0/255 masks for a batch of uint8 tiles, and its device.

    ``tta`` is the message's test-time augmentation (:data:`am.messages.TTA_MODES`). ``valid`` is,
    per tile, the (rows, columns) that are image, or None for all of it (a message's ``valid``):
    the mask is made of that part alone and is 0 beyond it. It is passed only to calls with a
    padded tile among theirs, so a predictor that never gets one need not take it.
    """

    @property
    def device(self) -> str: ...

    def predict(self, tiles: np.ndarray, *, tta: str = "off",
                valid: Sequence[tuple[int, int] | None] | None = None) -> np.ndarray: ...


class MissingModel(TransportError):
    """An ``s3://`` model that is not in memory and whose bucket or object does not exist.

    Every tile naming it would fail alike on every receive, until the queue sat in the
    dead-letter queue for a mistyped URI: the worker stops on it instead, as on a missing tile
    or mask bucket. ``uri`` is the model's URI, ``reason`` what S3 answered.
    """

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"model {uri} cannot be loaded: {reason}")
        self.uri = uri
        self.reason = reason


class ModelCache:
    """Callable ``uri -> Predictor``: local paths are loaded as they are, ``s3://`` URIs downloaded first."""

    def __init__(
        self,
        load: Callable[[Path], Predictor],
        *,
        storage: Storage | None,
        cache_dir: Path,
        capacity: int = DEFAULT_CAPACITY,
        recheck_s: float = MODEL_RECHECK_S,
    ) -> None:
        if capacity < 1:
            raise WorkerError(f"model cache capacity must be at least 1, got {capacity}")
        self._load = load
        self._storage = storage
        self._cache_dir = Path(cache_dir)
        self._capacity = capacity
        self._recheck_s = recheck_s
        # URI -> (local file of the version loaded, predictor), least recently used first.
        self._models: OrderedDict[str, tuple[Path, Predictor]] = OrderedDict()
        # s3:// URI -> (local file of its current version, monotonic time it was looked up).
        self._versions: dict[str, tuple[Path, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, uri: str) -> Predictor:
        with self._lock:
            try:
                path = self._local_path(uri)
            except TransportError as exc:
                if uri in self._models:
                    return self._keep_serving(uri, exc)
                if isinstance(exc, (MissingBucket, MissingObject)):
                    raise MissingModel(uri, str(exc)) from exc
                raise
            if uri in self._models:
                loaded_path, predictor = self._models[uri]
                if loaded_path == path:
                    self._models.move_to_end(uri)
                    return predictor
                del self._models[uri]
                log.info("model %s was replaced in S3: unloaded the version it replaced", uri)
            predictor = self._load(path)
            self._models[uri] = (path, predictor)
            while len(self._models) > self._capacity:
                evicted, _ = self._models.popitem(last=False)
                log.info("unloaded model %s (keeping the %d most recent)", evicted, self._capacity)
            log.info("loaded model %s on %s (%s)", uri, predictor.device, predictor.precision)
            return predictor

    @property
    def loaded(self) -> list[str]:
        """URIs of the models in memory, least recently used first."""
        with self._lock:
            return list(self._models)

    def _keep_serving(self, uri: str, exc: TransportError) -> Predictor:
        """The loaded version of ``uri`` after its re-check failed: a throttled, refused or dropped
        HeadObject (or download) says nothing against the version in memory, nor does an object or
        bucket gone since it was loaded (the weights in memory segment as they did), while failing
        the tiles for it would spend their receives and send them to the dead-letter queue. It is
        looked up again at the next re-check, not at every batch."""
        loaded_path, predictor = self._models[uri]
        self._versions[uri] = (loaded_path, time.monotonic())
        self._models.move_to_end(uri)
        log.warning("model %s: could not look up its current version in S3, the loaded version keeps serving "
                    "(looked up again in %.0f s): %s", uri, self._recheck_s, exc)
        return predictor

    def _local_path(self, uri: str) -> Path:
        """The file of the model's current version: an s3:// one downloaded when new, looked up again when due."""
        if not uri.startswith("s3://"):
            return Path(uri)
        if self._storage is None:
            raise WorkerError(f"model {uri} is on S3 but this worker has no storage to download it with")
        now = time.monotonic()
        known = self._versions.get(uri)
        if known is not None and now - known[1] < self._recheck_s:
            return known[0]
        path = self._storage.fetch_model(uri, self._cache_dir)
        self._versions[uri] = (path, now)
        return path


__all__ = ["DEFAULT_CAPACITY", "MissingModel", "ModelCache", "Predictor"]
