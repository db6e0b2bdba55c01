"""A message whose model names an object of the input or output bucket fails its tiles without the worker
reading that object: those buckets hold every job's tiles and masks, never checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from am.messages import tiles_key

from .conftest import JOB, Env, FakePredictor, expected_mask


@pytest.mark.parametrize("bucket, which", [("in-bucket", "input"), ("out-bucket", "output")])
def test_a_model_in_a_tile_bucket_is_not_read_and_fails_its_tiles_naming_where_checkpoints_go(
        env: Env, bucket: str, which: str) -> None:
    other_jobs_tile = f"s3://{bucket}/20261101-090000-0ld0ld/g/0000.npy"
    env.storage.put_bytes(bucket, "20261101-090000-0ld0ld/g/0000.npy", b"ANOTHER JOB'S TILE")
    env.put_tiles([0], model=other_jobs_tile)
    env.put_tiles([1])
    asked: list[str] = []
    predictor = FakePredictor()

    def models(uri: str) -> FakePredictor:
        asked.append(uri)
        return predictor

    worker = env.worker(models, idle_exit_s=1.5)
    assert worker.run() == 0

    assert other_jobs_tile not in asked
    results = env.collect_results()
    failed = [r for r in results if r.status == "failed"]
    assert sorted(r.attempt for r in failed) == [1, 2, 3] and {r.tiles for r in failed} == {(0,)}
    for result in failed:
        assert result.error.startswith(f"model {other_jobs_tile}: it lies in the workers' {which} bucket {bucket}")
        assert "models/ in the stack's model bucket" in result.error and "ANOTHER" not in result.error
    assert [r.tiles for r in results if r.status == "done"] == [(1,)]
    assert np.array_equal(env.mask(1), expected_mask(1))
    assert [d.body for d in env.dlq.receive(wait_s=0)] == [env.message(0, model=other_jobs_tile).to_json()]
    assert tiles_key(JOB, "g", (0,)) not in {o["Key"] for o in env.s3.list_objects_v2(Bucket="out-bucket")
                                             .get("Contents", [])}
