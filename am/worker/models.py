"""Models by URI for the worker: load once, keep the last few, download ``s3://`` checkpoints once.

Messages name the model that must segment their tile, so a worker started for one model can
still serve a job that asked for another. Loading a U-Net takes seconds and a GPU holds only
so many, hence a small least-recently-used cache::

    models = ModelCache(lambda path: Predictor.from_checkpoint(path), storage=storage, cache_dir=tmp)
    masks = models("s3://models/unet.pt").predict(tiles)
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from am.errors import WorkerError
from am.transport.storage import Storage

log = logging.getLogger(__name__)

# Two models cover a job changing models while another job still runs; more would crowd a GPU.
DEFAULT_CAPACITY = 2


class Predictor(Protocol):
    """What the worker needs of a model: 0/255 masks for a batch of uint8 tiles, and its device.

    ``tta`` is the message's test-time augmentation (:data:`am.messages.TTA_MODES`).
    """

    @property
    def device(self) -> str: ...

    def predict(self, tiles: np.ndarray, *, tta: str = "off") -> np.ndarray: ...


class ModelCache:
    """Callable ``uri -> Predictor``: local paths are loaded as they are, ``s3://`` URIs downloaded first."""

    def __init__(
        self,
        load: Callable[[Path], Predictor],
        *,
        storage: Storage | None,
        cache_dir: Path,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        if capacity < 1:
            raise WorkerError(f"model cache capacity must be at least 1, got {capacity}")
        self._load = load
        self._storage = storage
        self._cache_dir = Path(cache_dir)
        self._capacity = capacity
        self._models: OrderedDict[str, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, uri: str) -> Predictor:
        with self._lock:
            if uri in self._models:
                self._models.move_to_end(uri)
                return self._models[uri]
            predictor = self._load(self._local_path(uri))
            self._models[uri] = predictor
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

    def _local_path(self, uri: str) -> Path:
        if not uri.startswith("s3://"):
            return Path(uri)
        if self._storage is None:
            raise WorkerError(f"model {uri} is on S3 but this worker has no storage to download it with")
        return self._storage.fetch_model(uri, self._cache_dir)


__all__ = ["DEFAULT_CAPACITY", "ModelCache", "Predictor"]
