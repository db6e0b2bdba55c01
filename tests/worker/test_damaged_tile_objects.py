"""A tile object whose ``.npy`` header declares an array it does not carry fails its own message only, before numpy
allocates what the header declares."""

from __future__ import annotations

import io

import numpy as np
import pytest

from am.messages import tiles_key

from .conftest import JOB, Env, FakePredictor, expected_mask


def _object_declaring(shape: tuple[int, ...]) -> bytes:
    """A valid .npy header for uint8 ``shape``, followed by far fewer bytes than it declares."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(64)


@pytest.mark.parametrize("shape, declared", [
    ((1, 10**7, 10**7), "100000000000000 bytes"),   # 100 TB: numpy would try to allocate it
    ((2**70, 1, 1), f"{2**70} bytes"),               # a dimension beyond a C long
])
def test_an_object_declaring_an_impossible_array_fails_its_tile_and_the_worker_goes_on(
        env: Env, shape: tuple[int, ...], declared: str) -> None:
    env.put_tiles([0, 1])
    env.storage.put_bytes("in-bucket", tiles_key(JOB, "g", (0,)), _object_declaring(shape))
    worker = env.worker(FakePredictor(), idle_exit_s=1.5)

    assert worker.run() == 0

    results = env.collect_results()
    failed = sorted((r.attempt, r.tiles[0]) for r in results if r.status == "failed")
    assert failed == [(1, 0), (2, 0), (3, 0)]
    for result in (r for r in results if r.status == "failed"):
        assert "not a readable tile array (its header describes" in result.error, result.error
        assert f"{declared}, but 64 bytes follow it" in result.error and tiles_key(JOB, "g", (0,)) in result.error
    assert [r.tiles[0] for r in results if r.status == "done"] == [1]
    assert np.array_equal(env.mask(1), expected_mask(1))
    assert [d.body for d in env.dlq.receive(wait_s=0)] == [env.message(0).to_json()]
