"""Fixtures for the worker tests: moto S3/SQS with the tile queues, tiles to enqueue, fake predictors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pytest
from moto import mock_aws

from am.messages import TileMessage, TileResult, tiles_key
from am.tilepack import pack_tiles, unpack_masks
from am.transport.clients import ClientFactory
from am.transport.queue import Queue, create_results_queue, ensure_tile_queues
from am.transport.retry import RetryPolicy
from am.transport.storage import Storage
from am.worker.worker import Worker

FAST_RETRY = RetryPolicy(attempts=3, base_s=0.0, max_wait_s=0.0, sleep=lambda _s: None)
JOB = "job1"
MODEL = "fake://model"
TILE = 32


class FakePredictor:
    """Thresholds at 128, like a model that learnt exactly that; records every batch it sees."""

    device = "cpu"
    precision = "fp32"

    def __init__(self, *, delay_s: float = 0.0, fail: BaseException | None = None) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.batches: list[int] = []
        self.ttas: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def predict(self, tiles: np.ndarray, *, tta: str = "off") -> np.ndarray:
        self.batches.append(len(tiles))
        self.ttas.append(tta)
        self.started.set()
        self.release.wait(30)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        return np.where(tiles >= 128, np.uint8(255), np.uint8(0))


def tile_image(n: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, (TILE, TILE), dtype=np.uint8)


def expected_mask(n: int) -> np.ndarray:
    return np.where(tile_image(n) >= 128, np.uint8(255), np.uint8(0))


@dataclass
class Env:
    """One moto account with the buckets and queues a job uses."""

    clients: ClientFactory
    sqs: Any
    s3: Any
    storage: Storage
    queue: Queue
    dlq: Queue
    results: Queue
    made: list[Worker] = field(default_factory=list)

    def put_tiles(self, numbers: range | list[int], *, group: str = "g", corrupt: set[int] = frozenset(),
                  per_message: int = 1, tta: str = "off", model: str = MODEL) -> None:
        """Tiles ``per_message`` to an object and a message naming ``model``; an object holding a ``corrupt``
        tile is damaged."""
        numbers = list(numbers)
        bundles = [tuple(numbers[i:i + per_message]) for i in range(0, len(numbers), per_message)]
        items = []
        for tiles in bundles:
            data = pack_tiles(np.stack([tile_image(n) for n in tiles]))
            if corrupt & set(tiles):
                data = data[: len(data) // 2]
            items.append((tiles_key(JOB, group, tiles), data))
        self.storage.put_many("in-bucket", items)
        self.queue.send_many([self.message(tiles, group=group, tta=tta, model=model).to_json() for tiles in bundles])

    def message(self, tiles: int | tuple[int, ...], *, group: str = "g", model: str = MODEL,
                tta: str = "off") -> TileMessage:
        tiles = (tiles,) if isinstance(tiles, int) else tiles
        key = tiles_key(JOB, group, tiles)
        return TileMessage(job=JOB, group=group, tiles=tiles, input=key, output=key, model=model,
                           reply=self.results.url, tta=tta)

    def collect_results(self) -> list[TileResult]:
        out = []
        while batch := self.results.receive(wait_s=0):
            out.extend(TileResult.from_json(r.body) for r in batch)
            self.results.delete_many([r.receipt_handle for r in batch])
        return out

    def mask_object(self, tiles: int | tuple[int, ...], *, group: str = "g") -> bytes:
        """The stored bytes of the masks of the message that carried ``tiles``."""
        tiles = (tiles,) if isinstance(tiles, int) else tiles
        return self.storage.get_bytes("out-bucket", tiles_key(JOB, group, tiles))

    def mask(self, n: int, *, group: str = "g", first: int | None = None, count: int = 1) -> np.ndarray:
        """Tile ``n``'s 0/255 mask, from the object of the message whose first tile is ``first`` (default n)."""
        first = n if first is None else first
        key = tiles_key(JOB, group, (first,))
        masks = unpack_masks(self.storage.get_bytes("out-bucket", key), count=count, size=TILE, name=key)
        return masks[n - first]

    def worker(self, predictor: Any, **overrides: Any) -> Worker:
        models = predictor if callable(predictor) and not hasattr(predictor, "predict") else (lambda uri: predictor)
        kwargs: dict[str, Any] = {
            "input_bucket": "in-bucket",
            "output_bucket": "out-bucket",
            "results": partial(Queue, self.sqs, retry=FAST_RETRY),
            "batch_size": 4,
            "idle_exit_s": 1.0,
            "visibility_timeout_s": 30,
            "worker_id": "test-worker",
            "max_backoff_s": 0,
        }
        queue = Queue(self.sqs, self.queue.url, retry=FAST_RETRY)
        # As python -m am.worker reads them.
        kwargs["max_receives"], dead_letter_url = queue.redrive()
        kwargs["dead_letters"] = Queue(self.sqs, dead_letter_url, retry=FAST_RETRY)
        kwargs.update(overrides)
        storage = kwargs.pop("storage", self.storage)
        worker = Worker(queue, storage, models, **kwargs)
        self.made.append(worker)
        return worker


@pytest.fixture
def env(fake_aws_credentials: None) -> Iterator[Env]:
    with mock_aws():
        clients = ClientFactory()
        sqs, s3 = clients.sqs(), clients.s3()
        storage = Storage(s3, threads=4, retry=FAST_RETRY)
        storage.ensure_bucket("in-bucket")
        storage.ensure_bucket("out-bucket")
        url, dlq_url = ensure_tile_queues(sqs, name="tiles", dead_letter_name="tiles-dlq", visibility_timeout_s=30,
                                          max_receive_count=3)
        results_url = create_results_queue(sqs, prefix="results", job=JOB)
        e = Env(clients, sqs, s3, storage, Queue(sqs, url), Queue(sqs, dlq_url), Queue(sqs, results_url))
        yield e
        for worker in e.made:
            worker.abort()


def run_in_thread(worker: Worker) -> tuple[threading.Thread, dict[str, int]]:
    out: dict[str, int] = {}
    thread = threading.Thread(target=lambda: out.update(code=worker.run()), daemon=True)
    thread.start()
    return thread, out


Runner = Callable[[Worker], tuple[threading.Thread, dict[str, int]]]
