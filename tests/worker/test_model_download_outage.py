"""An ``s3://`` model's download waits out S3 throttling as a tile's transfer does, under the same patience
(AM_OUTAGE_PATIENCE_S), at start-up and for a model first named by a message; a refusal or a missing
object still fails at once, naming the URI and what to do.

Faults are injected at botocore's before-send hook of a real S3 client on moto, for the model's key
only, with the client's own retries off, so the counts are exact.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from am.errors import ConfigError, TransportError
from am.transport.storage import Storage
from am.worker import outage
from am.worker.__main__ import load_start_up_model
from am.worker.models import ModelCache
from am.worker.outage import StorageOutage, TransferAbandoned

from .conftest import FAST_RETRY, Env, FakePredictor
from .s3_faults import SLOW_DOWN, S3Faults, error_response, s3_without_botocore_retries

MODEL_URI = "s3://models/unet/model.pt"
ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message></Error>")


def model_faults(client: Any, *, count: int | None, status: int = 503, body: bytes = SLOW_DOWN) -> S3Faults:
    """Answers the first ``count`` GetObjects of the model's key (all when None) with ``status`` and ``body``."""
    return S3Faults(client, "GetObject", count=count, url_part="/unet/model.pt",
                    answer=lambda request: error_response(request, status, body))


@pytest.fixture(autouse=True)
def _short_outage_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outage, "OUTAGE_PAUSE_S", 0.01)


@pytest.fixture
def models_env(env: Env) -> Env:
    """``env`` with s3://models/unet/model.pt."""
    env.storage.ensure_bucket("models")
    env.storage.put_bytes("models", "unet/model.pt", b"weights")
    return env


def _cache(client: Any, tmp_path: Path) -> ModelCache:
    return ModelCache(lambda path: FakePredictor(), storage=Storage(client, threads=4, retry=FAST_RETRY),
                      cache_dir=tmp_path / "models")


def test_a_start_up_model_download_waits_out_throttling_beyond_the_retry_policy(
        models_env: Env, tmp_path: Path) -> None:
    # FAST_RETRY gives up after 3 attempts: 7 SlowDowns in a row outlast it twice over.
    client = s3_without_botocore_retries()
    faults = model_faults(client, count=7)
    cache = _cache(client, tmp_path)
    predictor = load_start_up_model(cache, MODEL_URI, outage_s=30.0)
    assert isinstance(predictor, FakePredictor)
    assert faults.injected == 7
    assert cache.loaded == [MODEL_URI]


def test_a_start_up_model_download_gives_up_after_the_patience_naming_the_model(
        models_env: Env, tmp_path: Path) -> None:
    client = s3_without_botocore_retries()
    faults = model_faults(client, count=None)
    with pytest.raises(StorageOutage, match=rf"^download of model {MODEL_URI} \(AM_MODEL\) still failing after "):
        load_start_up_model(_cache(client, tmp_path), MODEL_URI, outage_s=0.3)
    assert faults.injected > 3  # retried past the policy's own attempts


def test_a_refused_model_download_fails_at_once_naming_the_uri_and_what_to_check(
        models_env: Env, tmp_path: Path) -> None:
    client = s3_without_botocore_retries()
    faults = model_faults(client, count=None, status=403, body=ACCESS_DENIED)
    started = time.monotonic()
    with pytest.raises(TransportError, match=rf"^{MODEL_URI} cannot be read: access denied \(HTTP 403\)") as raised:
        load_start_up_model(_cache(client, tmp_path), MODEL_URI, outage_s=300.0)
    assert time.monotonic() - started < 10
    assert faults.injected == 1
    assert "s3:GetObject" in str(raised.value)


@pytest.mark.parametrize(("uri", "said"), [
    ("s3://models/unet/typo.pt", "s3://models/unet/typo.pt does not exist"),
    ("s3://typo-models/unet/model.pt", "bucket typo-models does not exist"),
])
def test_a_missing_model_fails_at_once_naming_am_model(models_env: Env, tmp_path: Path, uri: str, said: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^AM_MODEL = {uri} cannot be loaded: .*{said}.*set AM_MODEL to the s3://"):
        load_start_up_model(_cache(s3_without_botocore_retries(), tmp_path), uri, outage_s=300.0)
    assert time.monotonic() - started < 10


def test_a_model_first_named_by_a_message_is_downloaded_through_throttling_and_no_tile_fails(
        models_env: Env, tmp_path: Path) -> None:
    env = models_env
    env.put_tiles(range(2), model=MODEL_URI)
    client = s3_without_botocore_retries()
    faults = model_faults(client, count=7)
    worker = env.worker(_cache(client, tmp_path), storage=Storage(client, threads=4, retry=FAST_RETRY),
                        batch_size=2, idle_exit_s=1.0, outage_s=30.0)
    assert worker.run() == 0
    assert faults.injected == 7
    assert sorted((r.tiles[0], r.status, r.attempt) for r in env.collect_results()) == [(0, "done", 1),
                                                                                         (1, "done", 1)]
    assert worker.stats.failed == 0
    assert env.dlq.depth() == {"visible": 0, "in_flight": 0}


def test_a_model_download_outage_beyond_the_patience_stops_the_worker_with_its_messages_given_back(
        models_env: Env, tmp_path: Path) -> None:
    env = models_env
    env.put_tiles(range(2), model=MODEL_URI)
    client = s3_without_botocore_retries()
    model_faults(client, count=None)
    worker = env.worker(_cache(client, tmp_path), storage=Storage(client, threads=4, retry=FAST_RETRY),
                        batch_size=2, idle_exit_s=30.0, outage_s=0.3)
    assert worker.run() == 1
    assert env.collect_results() == []
    assert worker.stats.failed == 0
    assert env.queue.depth() == {"visible": 2, "in_flight": 0}
    assert env.dlq.depth() == {"visible": 0, "in_flight": 0}


def test_a_stop_while_the_start_up_model_waits_for_s3_ends_the_wait(models_env: Env, tmp_path: Path) -> None:
    """A worker told to stop (SIGTERM) while starting during an outage stops waiting instead of sitting
    out its patience until ECS kills it."""
    client = s3_without_botocore_retries()
    model_faults(client, count=None)
    asked: list[float] = []

    def stopped(timeout_s: float) -> bool:
        asked.append(timeout_s)
        return True

    started = time.monotonic()
    with pytest.raises(TransferAbandoned, match=rf"^download of model {MODEL_URI} \(AM_MODEL\) abandoned "):
        load_start_up_model(_cache(client, tmp_path), MODEL_URI, outage_s=300.0, stopped=stopped)
    assert len(asked) == 1 and time.monotonic() - started < 10


def test_a_model_download_outage_longer_than_the_batch_watch_is_named_an_outage_not_a_hung_device(
        models_env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The wait runs on the compute thread the hung-device watch (AM_MAX_BATCH_S) times: each round of the
    outage starts that clock again, so the patience decides, and the log names S3, not the GPU."""
    env = models_env
    env.put_tiles([0], model=MODEL_URI)
    client = s3_without_botocore_retries()
    model_faults(client, count=None)
    # Each round of the outage takes milliseconds, far below the watch; 2 s leaves room for a loaded machine.
    worker = env.worker(_cache(client, tmp_path), storage=Storage(client, threads=4, retry=FAST_RETRY),
                        batch_size=1, idle_exit_s=30.0, outage_s=5.0, max_batch_s=2.0)
    started = time.monotonic()
    assert worker.run() == 1
    assert time.monotonic() - started >= 5.0
    said = "\n".join(record.getMessage() for record in caplog.records)
    assert "hung GPU" not in said
    assert "still failing after" in said and "S3 throttling or unreachable" in said
    assert env.queue.depth() == {"visible": 1, "in_flight": 0}
    assert worker.stats.failed == 0
