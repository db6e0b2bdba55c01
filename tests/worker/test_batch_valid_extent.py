"""A worker hands each tile's image extent (a message's ``valid``) to the model, and refuses one that does not fit.

Tiles of messages with and without an extent share forward passes; the predictor gets one extent
(or None) per tile, and only in calls that hold a padded tile, so predictors that never see one
need not take the parameter.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from am.messages import TileMessage
from am.tilepack import pack_tiles
from am.worker.batch import TileSteps, TileWork
from am.worker.timing import StageClock

from .conftest import TILE, Env, FakePredictor, expected_mask, tile_image


class ExtentPredictor(FakePredictor):
    """Records the extents of every call and, like the real model, leaves the mask 0 beyond them."""

    def __init__(self) -> None:
        super().__init__()
        self.extents: list[object] = []

    def predict(self, tiles: np.ndarray, *, tta: str = "off", valid=None) -> np.ndarray:
        self.extents.append(None if valid is None else list(valid))
        masks = super().predict(tiles, tta=tta)
        for mask, extent in zip(masks, valid or [None] * len(masks), strict=True):
            if extent is not None:
                mask[extent[0]:] = 0
                mask[:, extent[1]:] = 0
        return masks


def _send(env: Env, tiles: tuple[int, ...], *, valid: tuple[int, int] | None) -> None:
    message = dataclasses.replace(env.message(tiles), valid=valid)
    env.storage.put_bytes("in-bucket", message.input, pack_tiles(np.stack([tile_image(n) for n in tiles])))
    env.queue.send_many([message.to_json()])


def _steps(env: Env, predictor: FakePredictor) -> TileSteps:
    return TileSteps(env.storage, lambda uri: predictor, input_bucket="in-bucket", output_bucket="out-bucket",
                     clock=StageClock())


def _received(env: Env, count: int) -> list[TileWork]:
    received = env.queue.receive(max_messages=count, wait_s=0)
    assert len(received) == count
    return sorted((TileWork(r, TileMessage.from_json(r.body)) for r in received), key=lambda w: w.message.tiles)


def test_each_tile_gets_its_messages_extent_in_a_shared_forward_pass(env: Env) -> None:
    _send(env, (0, 1), valid=(20, TILE))
    _send(env, (2,), valid=None)
    predictor = ExtentPredictor()
    steps = _steps(env, predictor)
    work = _received(env, 2)
    for item in work:
        steps.fetch(item)
    steps.infer(work)

    assert predictor.batches == [3]
    assert predictor.extents == [[(20, TILE), (20, TILE), None]]
    padded, whole = work
    assert padded.ok and whole.ok and padded.mask is not None and whole.mask is not None
    for mask, n in zip(padded.mask, (0, 1), strict=True):
        assert np.array_equal(mask[:20], expected_mask(n)[:20]) and not mask[20:].any()
    assert np.array_equal(whole.mask[0], expected_mask(2))


def test_calls_of_whole_tiles_name_no_extent(env: Env) -> None:
    """A predictor without the parameter (as before it existed) still serves messages of whole tiles."""
    _send(env, (0, 1), valid=None)
    predictor = FakePredictor()
    steps = _steps(env, predictor)
    [work] = _received(env, 1)
    steps.fetch(work)
    steps.infer([work])
    assert work.ok and work.mask is not None
    assert np.array_equal(work.mask, np.stack([expected_mask(0), expected_mask(1)]))


def test_an_extent_larger_than_the_tiles_fails_the_message_by_name(env: Env) -> None:
    _send(env, (0,), valid=(TILE + 8, TILE))
    _send(env, (1,), valid=(TILE, 10))
    predictor = ExtentPredictor()
    steps = _steps(env, predictor)
    bad, good = _received(env, 2)
    for item in (bad, good):
        steps.fetch(item)
    steps.infer([bad, good])

    assert not bad.ok
    assert f"image extent {TILE + 8}x{TILE} (field 'valid') is larger than its {TILE}x{TILE} tiles" in bad.error
    assert bad.error.startswith("input: s3://in-bucket/job1/g/0000.npy")
    assert good.ok and predictor.extents == [[(TILE, 10)]]
