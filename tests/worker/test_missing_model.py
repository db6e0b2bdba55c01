"""An ``s3://`` model that is not loaded and whose bucket or object does not exist is no tile's fault:
the worker refuses to start on it (naming AM_MODEL), or stops on it with every held message given back,
instead of failing every tile until the whole queue sits in the dead-letter queue. A model already
loaded keeps serving when its bucket or object goes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from am.errors import ConfigError
from am.messages import tiles_key
from am.tilepack import pack_tiles
from am.worker.__main__ import build_worker
from am.worker.config import WorkerConfig
from am.worker.models import MissingModel, ModelCache
from am.worker.worker import opencv_threads_of_a_worker

from .conftest import JOB, Env, FakePredictor, tile_image

# A mistyped bucket, and a bucket that exists without the key.
MISSING = {
    "bucket": ("s3://typo-models/unet/model.pt", "bucket typo-models does not exist (reading unet/model.pt)"),
    "object": ("s3://models/unet/typo.pt", "s3://models/unet/typo.pt does not exist"),
}


@pytest.fixture
def models_bucket(env: Env) -> Env:
    """``env`` with s3://models/unet/model.pt, a checkpoint that is there."""
    env.storage.ensure_bucket("models")
    env.storage.put_bytes("models", "unet/model.pt", b"weights")
    return env


def _put_tiles_for(env: Env, model: str, count: int) -> None:
    """``count`` tiles, one to a message, whose messages name ``model``."""
    env.storage.put_many("in-bucket", [(tiles_key(JOB, "g", (n,)), pack_tiles(np.stack([tile_image(n)])))
                                       for n in range(count)])
    env.queue.send_many([env.message(n, model=model).to_json() for n in range(count)])


def _cache(env: Env, tmp_path: Path, **kwargs: float) -> ModelCache:
    return ModelCache(lambda path: FakePredictor(), storage=env.storage, cache_dir=tmp_path / "models", **kwargs)


@pytest.mark.parametrize("missing", sorted(MISSING))
def test_a_model_never_loaded_whose_bucket_or_object_does_not_exist_is_a_missing_model(
        models_bucket: Env, tmp_path: Path, missing: str) -> None:
    uri, said = MISSING[missing]
    cache = _cache(models_bucket, tmp_path)
    with pytest.raises(MissingModel, match=rf"^model {uri} cannot be loaded: ") as raised:
        cache(uri)
    assert raised.value.uri == uri and said in raised.value.reason
    assert cache.loaded == []


@pytest.mark.parametrize("gone", ["bucket", "object"])
def test_a_loaded_model_keeps_serving_when_its_bucket_or_object_goes(
        models_bucket: Env, tmp_path: Path, gone: str, caplog: pytest.LogCaptureFixture) -> None:
    cache = _cache(models_bucket, tmp_path, recheck_s=0.0)
    loaded = cache("s3://models/unet/model.pt")
    models_bucket.s3.delete_object(Bucket="models", Key="unet/model.pt")
    if gone == "bucket":
        models_bucket.s3.delete_bucket(Bucket="models")
    with caplog.at_level(logging.WARNING, logger="am.worker.models"):
        assert cache("s3://models/unet/model.pt") is loaded
    assert "could not look up its current version in S3, the loaded version keeps serving" in caplog.text


@pytest.mark.parametrize("missing", sorted(MISSING))
def test_tiles_of_a_model_that_does_not_exist_stop_the_worker_and_none_is_failed(
        models_bucket: Env, tmp_path: Path, missing: str, caplog: pytest.LogCaptureFixture) -> None:
    """Failing them would spend their receives until every tile naming the model sat in the dead-letter queue."""
    uri, said = MISSING[missing]
    env = models_bucket
    _put_tiles_for(env, uri, 4)
    worker = env.worker(_cache(env, tmp_path), batch_size=2, idle_exit_s=30)
    assert worker.run() == 1
    assert f"worker test-worker: model {uri} cannot be loaded: " in caplog.text and said in caplog.text
    assert "giving every held message back and exiting" in caplog.text
    assert env.collect_results() == []
    assert (worker.stats.done, worker.stats.failed) == (0, 0)
    assert env.queue.depth() == {"visible": 4, "in_flight": 0}
    assert env.dlq.depth() == {"visible": 0, "in_flight": 0}


def test_a_loaded_model_whose_object_goes_keeps_segmenting_its_tiles(models_bucket: Env, tmp_path: Path) -> None:
    env = models_bucket
    cache = _cache(env, tmp_path, recheck_s=0.0)
    cache("s3://models/unet/model.pt")
    env.s3.delete_object(Bucket="models", Key="unet/model.pt")
    _put_tiles_for(env, "s3://models/unet/model.pt", 2)
    worker = env.worker(cache, idle_exit_s=1.0)
    assert worker.run() == 0
    assert {(r.status, r.error) for r in env.collect_results()} == {("done", "")}


@pytest.mark.parametrize("missing", sorted(MISSING))
def test_a_worker_refuses_to_start_on_a_model_that_does_not_exist_naming_am_model(
        models_bucket: Env, missing: str) -> None:
    uri, said = MISSING[missing]
    env = models_bucket
    env.put_tiles([0])
    config = WorkerConfig(queue_url=env.queue.url, input_bucket="in-bucket", output_bucket="out-bucket", model=uri)
    with opencv_threads_of_a_worker(), pytest.raises(ConfigError) as raised:
        build_worker(config)
    message = str(raised.value)
    assert message.startswith(f"AM_MODEL = {uri} cannot be loaded: ") and said in message
    assert "set AM_MODEL to the s3:// URI of an uploaded checkpoint" in message
    # Refused before anything was received.
    assert [r.receive_count for r in env.queue.receive(wait_s=0)] == [1]
