"""The worker's smaller parts: model cache, environment settings, lease and heartbeat."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from am.errors import ConfigError, WorkerError
from am.worker.config import WorkerConfig
from am.worker.lease import Heartbeat, Lease
from am.worker.models import ModelCache
from tests.waiting import wait_until

from .conftest import Env, FakePredictor

BASE_ENV = {"AM_QUEUE_URL": "http://127.0.0.1:1/123/tiles", "AM_INPUT_BUCKET": "in", "AM_OUTPUT_BUCKET": "out"}


def test_model_cache_keeps_the_two_most_recent(tmp_path: Path) -> None:
    loads: list[Path] = []

    def load(path: Path) -> FakePredictor:
        loads.append(path)
        return FakePredictor()

    cache = ModelCache(load, storage=None, cache_dir=tmp_path)
    a = cache("/m/a.pt")
    assert cache("/m/a.pt") is a
    cache("/m/b.pt")
    cache("/m/a.pt")
    cache("/m/c.pt")  # evicts b, the least recently used
    assert cache.loaded == ["/m/a.pt", "/m/c.pt"]
    cache("/m/b.pt")
    assert loads == [Path("/m/a.pt"), Path("/m/b.pt"), Path("/m/c.pt"), Path("/m/b.pt")]


def test_model_cache_downloads_s3_models_once(env: Env, tmp_path: Path) -> None:
    env.storage.ensure_bucket("models")
    env.storage.put_bytes("models", "unet/model.pt", b"weights")
    loads: list[bytes] = []
    cache = ModelCache(lambda p: loads.append(p.read_bytes()) or FakePredictor(), storage=env.storage,
                       cache_dir=tmp_path, capacity=1)
    cache("s3://models/unet/model.pt")
    assert loads == [b"weights"]
    assert len(list(tmp_path.rglob("model.pt"))) == 1


def test_model_cache_loads_a_checkpoint_replaced_under_its_uri(env: Env, tmp_path: Path, monkeypatch) -> None:
    """A worker still up between jobs must not segment the next job with the weights make upload-model replaced."""
    env.storage.ensure_bucket("models")
    env.storage.put_bytes("models", "unet/model.pt", b"weights v1")
    clock = [1000.0]
    monkeypatch.setattr("am.worker.models.time.monotonic", lambda: clock[0])
    heads: list[str] = []
    original_head = env.storage.head_object
    monkeypatch.setattr(env.storage, "head_object", lambda uri: heads.append(uri) or original_head(uri))
    loads: list[bytes] = []
    cache = ModelCache(lambda p: loads.append(p.read_bytes()) or FakePredictor(), storage=env.storage,
                       cache_dir=tmp_path, recheck_s=5.0)
    first = cache("s3://models/unet/model.pt")
    env.storage.put_bytes("models", "unet/model.pt", b"weights v2")
    clock[0] += 4.0
    assert cache("s3://models/unet/model.pt") is first and len(heads) == 1, "looked up again before it was due"
    clock[0] += 2.0
    second = cache("s3://models/unet/model.pt")
    assert second is not first and loads == [b"weights v1", b"weights v2"] and len(heads) == 2
    assert cache.loaded == ["s3://models/unet/model.pt"]
    clock[0] += 6.0
    assert cache("s3://models/unet/model.pt") is second and loads == [b"weights v1", b"weights v2"]


def test_model_cache_needs_storage_for_s3(tmp_path: Path) -> None:
    with pytest.raises(WorkerError, match="on S3"):
        ModelCache(lambda p: FakePredictor(), storage=None, cache_dir=tmp_path)("s3://b/m.pt")


def test_config_from_environment_defaults() -> None:
    config = WorkerConfig.from_environ(BASE_ENV)
    assert (config.region, config.idle_exit_s, config.visibility_timeout_s, config.model) == ("us-east-1", 60, 120, "")
    assert config.batch_size_for("cpu") == 4 and config.batch_size_for("cuda:0") == 64
    assert config.worker_id
    custom = WorkerConfig.from_environ({**BASE_ENV, "AM_BATCH_SIZE": "8", "AM_LOG_LEVEL": "debug",
                                        "AM_WORKER_ID": "w7", "AM_THREADS": "2"})
    assert (custom.batch_size_for("cuda"), custom.log_level, custom.worker_id, custom.threads) == (8, "DEBUG", "w7", 2)
    assert (config.compile, config.precision, config.postprocess) == ("auto", "auto", "on")
    fast = WorkerConfig.from_environ({**BASE_ENV, "AM_COMPILE": "OFF", "AM_PRECISION": "bf16",
                                      "AM_POSTPROCESS": "Off"})
    assert (fast.compile, fast.precision, fast.postprocess) == ("off", "bf16", "off")


def test_config_lists_every_missing_variable() -> None:
    with pytest.raises(ConfigError, match="AM_QUEUE_URL, AM_OUTPUT_BUCKET"):
        WorkerConfig.from_environ({"AM_INPUT_BUCKET": "in"})


@pytest.mark.parametrize("name,value,match", [
    ("AM_BATCH_SIZE", "four", "not a valid whole number"),
    ("AM_BATCH_SIZE", "-1", ">= 0"),
    ("AM_IDLE_EXIT_S", "0", "> 0"),
    ("AM_IDLE_EXIT_S", "inf", "finite number of seconds"),
    ("AM_IDLE_EXIT_S", "nan", "finite number of seconds"),
    ("AM_STOP_TIMEOUT_S", "0", "> 0"),
    ("AM_STOP_TIMEOUT_S", "inf", "finite number of seconds"),
    ("AM_STOP_TIMEOUT_S", "soon", "not a valid number"),
    ("AM_VISIBILITY_TIMEOUT_S", "5", "between 30 and 43200"),
    ("AM_LOG_LEVEL", "LOUD", "one of"),
    ("AM_ENDPOINT_URL", "127.0.0.1:5000", "http://"),
    ("AM_COMPILE", "yes", "auto, on, off"),
    ("AM_PRECISION", "int8", "auto, fp32, fp16, bf16"),
    ("AM_POSTPROCESS", "yes", "on, off"),
    ("AM_OUTPUT_BUCKET", "in", "AM_INPUT_BUCKET and AM_OUTPUT_BUCKET are both 'in'"),
    ("AM_MAX_BATCH_S", "0", "AM_MAX_BATCH_S = 0.0 must be a finite number of seconds > 0"),
    ("AM_THREADS", "-1", "AM_THREADS -1: give a number of CPU threads >= 1, or 0"),
    # Far beyond the CPUs torch's pool crashes, or the process runs out of threads.
    ("AM_THREADS", "100000", "AM_THREADS 100000: this machine has .* CPUs"),
])
def test_config_rejects_bad_values(name: str, value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        WorkerConfig.from_environ({**BASE_ENV, name: value})


class RecordingQueue:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def change_visibility_many(self, handles: Any, seconds: int) -> None:
        self.calls.append((list(handles), seconds))


def test_heartbeat_extends_every_held_message_in_chunks(env: Env) -> None:
    from am.transport.queue import Received

    lease = Lease()
    lease.add(Received(body="", receipt_handle=f"h{i}", receive_count=1, message_id=str(i)) for i in range(12))
    queue = RecordingQueue()
    heartbeat = Heartbeat(queue, lease, visibility_timeout_s=90)  # type: ignore[arg-type]
    assert heartbeat.interval_s == 30
    heartbeat.beat()
    assert [(len(h), s) for h, s in queue.calls] == [(10, 90), (2, 90)]
    lease.remove(["h0", "h1"])
    queue.calls.clear()
    heartbeat.beat()
    assert sum(len(h) for h, _ in queue.calls) == 10


def test_heartbeat_thread_beats_until_stopped() -> None:
    from am.transport.queue import Received

    lease = Lease()
    lease.add([Received(body="", receipt_handle="h", receive_count=1, message_id="m")])
    queue = RecordingQueue()
    with Heartbeat(queue, lease, visibility_timeout_s=3) as heartbeat:  # type: ignore[arg-type]
        wait_until(lambda: queue.calls, timeout=60, what="a first heartbeat")
        assert queue.calls[0] == (["h"], 3)
    # Stopped: the thread has ended, so no beat can follow.
    assert not heartbeat._thread.is_alive()
    beats = len(queue.calls)
    time.sleep(heartbeat.interval_s * 1.5)
    assert len(queue.calls) == beats
