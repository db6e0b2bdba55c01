"""What a reviewer found the worker charging to its tiles that was not their fault: a model re-check that
failed, a missing bucket, a large message timed as one model call, and the last failure of an ended job."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from am.errors import ConfigError, TransportError, WorkerError
from am.messages import TileMessage
from am.transport.queue import Queue, delete_queue
from am.worker.__main__ import build_worker
from am.worker.batch import TileSteps, TileWork
from am.worker.config import WorkerConfig
from am.worker.models import ModelCache
from am.worker.timing import StageClock
from am.worker.worker import opencv_threads_of_a_worker

from .conftest import Env, FakePredictor, expected_mask, run_in_thread

MODEL_URI = "s3://models/unet/model.pt"

# -- a loaded s3:// model whose version cannot be looked up keeps serving ------------------------


def _s3_model_cache(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModelCache, list[float],
                                                                                       list[str], list[bool]]:
    """A cache of the model at MODEL_URI on a clock the test moves; HeadObject fails while ``failing[0]``."""
    env.storage.ensure_bucket("models")
    env.storage.put_bytes("models", "unet/model.pt", b"weights")
    clock = [1000.0]
    monkeypatch.setattr("am.worker.models.time.monotonic", lambda: clock[0])
    heads: list[str] = []
    failing = [False]
    original_head = env.storage.head_object

    def head(uri: str) -> dict[str, Any]:
        heads.append(uri)
        if failing[0]:
            raise TransportError(f"head {uri} failed 6 time(s), giving up; last error: SlowDown (HTTP 503)")
        return original_head(uri)

    monkeypatch.setattr(env.storage, "head_object", head)
    cache = ModelCache(lambda p: FakePredictor(), storage=env.storage, cache_dir=tmp_path, recheck_s=5.0)
    return cache, clock, heads, failing


def test_a_loaded_s3_model_keeps_serving_when_its_version_cannot_be_looked_up(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A throttled HeadObject must not fail a batch the model in memory can segment."""
    cache, clock, heads, failing = _s3_model_cache(env, tmp_path, monkeypatch)
    loaded = cache(MODEL_URI)
    failing[0] = True
    clock[0] += 6.0
    with caplog.at_level(logging.WARNING, logger="am.worker.models"):
        assert cache(MODEL_URI) is loaded
    assert f"model {MODEL_URI}: could not look up its current version" in caplog.text
    assert "the loaded version keeps serving" in caplog.text and "SlowDown" in caplog.text
    assert len(heads) == 2
    clock[0] += 1.0
    assert cache(MODEL_URI) is loaded and len(heads) == 2, "looked up again before the next re-check"
    clock[0] += 5.0
    assert cache(MODEL_URI) is loaded and len(heads) == 3
    failing[0] = False
    clock[0] += 6.0
    assert cache(MODEL_URI) is loaded and len(heads) == 4


def test_a_model_never_loaded_still_fails_when_its_version_cannot_be_looked_up(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, _clock, _heads, failing = _s3_model_cache(env, tmp_path, monkeypatch)
    failing[0] = True
    with pytest.raises(TransportError, match="SlowDown"):
        cache(MODEL_URI)
    assert cache.loaded == []


# -- a missing bucket is the deployment's fault, not the tiles' ----------------------------------


@pytest.mark.parametrize(("setting", "buckets"), [
    ("AM_INPUT_BUCKET", {"input_bucket": "typo-bucket", "output_bucket": "out-bucket"}),
    ("AM_OUTPUT_BUCKET", {"input_bucket": "in-bucket", "output_bucket": "typo-bucket"}),
])
def test_a_worker_refuses_to_start_on_a_bucket_that_does_not_exist(env: Env, setting: str,
                                                                   buckets: dict[str, str]) -> None:
    env.put_tiles([0])
    config = WorkerConfig(queue_url=env.queue.url, model="/nowhere/never-loaded.pt", **buckets)
    with opencv_threads_of_a_worker(), pytest.raises(
            ConfigError, match=rf"bucket typo-bucket \({setting}\) does not exist; set {setting}"):
        build_worker(config)
    # Refused before the model was loaded and before anything was received.
    received = env.queue.receive(wait_s=0)
    assert [r.receive_count for r in received] == [1]


@pytest.mark.parametrize(("which", "setting"), [("input_bucket", "AM_INPUT_BUCKET"),
                                                ("output_bucket", "AM_OUTPUT_BUCKET")])
def test_a_bucket_gone_while_the_worker_runs_stops_it_and_charges_no_tile(
        env: Env, which: str, setting: str, caplog: pytest.LogCaptureFixture) -> None:
    """Failing every tile would move the whole queue to the dead-letter queue, and the worker would exit 0."""
    env.put_tiles(range(6))
    worker = env.worker(FakePredictor(), batch_size=2, idle_exit_s=30, **{which: "gone-bucket"})
    assert worker.run() == 1
    assert f"the {which.replace('_', ' ')} ({setting}) is gone: bucket gone-bucket does not exist" in caplog.text
    assert env.collect_results() == []
    assert (worker.stats.done, worker.stats.failed) == (0, 0)
    assert env.queue.depth() == {"visible": 6, "in_flight": 0}
    assert env.dlq.depth() == {"visible": 0, "in_flight": 0}


# -- AM_MAX_BATCH_S times one model call, not a batch of large messages --------------------------


def test_tile_steps_call_the_model_per_batch_size_and_say_when_each_call_returns(env: Env) -> None:
    env.put_tiles(range(10), per_message=5)
    received = env.queue.receive(max_messages=2, wait_s=0)
    predictor = FakePredictor()
    returned: list[int] = []
    steps = TileSteps(env.storage, lambda uri: predictor, input_bucket="in-bucket", output_bucket="out-bucket",
                      clock=StageClock(), tiles_per_call=4,
                      call_returned=lambda: returned.append(len(predictor.batches)))
    work = sorted((TileWork(r, TileMessage.from_json(r.body)) for r in received), key=lambda w: w.message.tiles)
    for item in work:
        steps.fetch(item)
    steps.infer(work)
    assert predictor.batches == [4, 4, 2]
    assert returned == [1, 2, 3]
    for item in work:
        assert item.ok and item.mask is not None
        assert np.array_equal(item.mask, np.stack([expected_mask(n) for n in item.message.tiles]))


def test_tile_steps_refuse_a_negative_call_size(env: Env) -> None:
    with pytest.raises(WorkerError, match="tiles per model call must be >= 0"):
        TileSteps(env.storage, lambda uri: FakePredictor(), input_bucket="in-bucket", output_bucket="out-bucket",
                  clock=StageClock(), tiles_per_call=-1)


class PerTilePredictor(FakePredictor):
    """Takes ``seconds_per_tile`` for each tile, as a device does: a call of more tiles takes longer."""

    def __init__(self, *, seconds_per_tile: float) -> None:
        super().__init__()
        self.seconds_per_tile = seconds_per_tile

    def predict(self, tiles: np.ndarray, *, tta: str = "off") -> np.ndarray:
        time.sleep(self.seconds_per_tile * len(tiles))
        return super().predict(tiles, tta=tta)


def test_a_message_of_many_model_calls_is_not_taken_for_a_hung_device(env: Env) -> None:
    """A message of 8 tiles at about 0.3 s a tile, a limit of 1.2 s: the batch takes longer, no call of
    the batch size (1 tile) does."""
    env.put_tiles(range(8), per_message=8)
    predictor = PerTilePredictor(seconds_per_tile=0.3)
    worker = env.worker(predictor, batch_size=1, max_batch_s=1.2, idle_exit_s=1.0)
    assert worker.run() == 0
    assert predictor.batches == [1] * 8
    assert (worker.stats.done, worker.stats.failed) == (8, 0)
    assert {r.status for r in env.collect_results()} == {"done"}
    assert env.queue.depth() == {"visible": 0, "in_flight": 0}


def test_a_model_call_that_hangs_after_others_returned_is_still_caught(env: Env,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    env.put_tiles(range(8), per_message=8)
    hung = threading.Event()
    release = threading.Event()

    class HangsOnThirdCall(FakePredictor):
        def predict(self, tiles: np.ndarray, *, tta: str = "off") -> np.ndarray:
            if len(self.batches) == 2:
                hung.set()
                release.wait(30)
            return super().predict(tiles, tta=tta)

    predictor = HangsOnThirdCall()
    worker = env.worker(predictor, batch_size=2, max_batch_s=1.0, idle_exit_s=30)
    thread, out = run_in_thread(worker)
    try:
        assert hung.wait(10)
        thread.join(15)
        assert out == {"code": 1}
        assert "a model call has not returned after 1 s" in caplog.text
        assert env.queue.depth() == {"visible": 1, "in_flight": 0}
    finally:
        release.set()


# -- the last failure of an ended job is deleted, not dead-lettered ------------------------------


def test_a_last_failure_of_an_ended_job_is_deleted_not_dead_lettered(env: Env) -> None:
    """Nobody would take it out of the dead-letter queue: its job, which drains its dead letters, has ended."""
    env.put_tiles([0], corrupt={0})
    for _ in range(2):  # two earlier receives whose worker died: the next one is the last (max 3)
        received = env.queue.receive(max_messages=1, wait_s=0)
        env.queue.change_visibility_many([received[0].receipt_handle], 0)
    delete_queue(env.sqs, env.results.url)
    worker = env.worker(FakePredictor(), idle_exit_s=1.0)
    assert worker.run() == 0
    assert env.dlq.depth() == {"visible": 0, "in_flight": 0}
    assert env.queue.depth() == {"visible": 0, "in_flight": 0}


def test_a_last_failure_of_a_running_job_is_still_dead_lettered_when_its_queue_cannot_be_asked(
        env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    env.put_tiles([0], corrupt={0})
    for _ in range(2):
        received = env.queue.receive(max_messages=1, wait_s=0)
        env.queue.change_visibility_many([received[0].receipt_handle], 0)
    worker = env.worker(FakePredictor(), idle_exit_s=1.0)
    depth = Queue.depth

    def results_queue_refused(self: Queue) -> dict[str, int]:
        if self.url == env.results.url:
            raise TransportError(f"get attributes of {self.name} failed and was not retried: AccessDenied")
        return depth(self)

    monkeypatch.setattr(Queue, "depth", results_queue_refused)
    assert worker.run() == 0
    monkeypatch.undo()
    assert "could not tell whether results queue" in caplog.text
    assert [json.loads(d.body)["tiles"] for d in env.dlq.receive(wait_s=0)] == [[0]]
    assert [(r.status, r.attempt) for r in env.collect_results()] == [("failed", 3)]
