"""Predictor: shapes, values, determinism, threshold from the checkpoint, input checks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from am.errors import InputError
from am.model.build import build_model
from am.model.checkpoint import ModelMeta, save_checkpoint
from am.model.predict import Predictor


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(3, 64, 96), dtype=np.uint8)


def test_masks_are_binary_and_deterministic(tiny_model: Path, tiles: np.ndarray) -> None:
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu", threads=1, batch_size=2)
    first = predictor.predict(tiles)
    assert first.dtype == np.uint8 and first.shape == tiles.shape
    assert set(np.unique(first)) <= {0, 255}
    np.testing.assert_array_equal(first, predictor.predict(tiles))
    # Batching does not change results.
    single = np.concatenate([predictor.predict(tiles[i : i + 1]) for i in range(len(tiles))])
    np.testing.assert_array_equal(first, single)
    assert predictor.device == "cpu"


def test_threshold_comes_from_the_checkpoint(tmp_path: Path, tiles: np.ndarray) -> None:
    base = ModelMeta(encoder="tu-mobilenetv3_small_100", encoder_depth=5, decoder_channels=(32, 16, 8, 8, 4))
    torch.manual_seed(0)
    model = build_model(base)
    masks = {}
    for threshold in (0.3, 0.7):
        path = tmp_path / f"t{threshold}.pt"
        save_checkpoint(path, model, ModelMeta(**{**base.to_dict(), "threshold": threshold}))
        predictor = Predictor.from_checkpoint(path, device="cpu")
        proba = predictor.predict_proba(tiles)
        masks[threshold] = predictor.predict(tiles)
        np.testing.assert_array_equal(masks[threshold] == 255, proba >= threshold)
    assert (masks[0.3] >= masks[0.7]).all()


def test_rejects_bad_tiles(tiny_model: Path) -> None:
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu")
    with pytest.raises(InputError, match="multiple of 32"):
        predictor.predict(np.zeros((1, 100, 64), dtype=np.uint8))
    with pytest.raises(InputError, match="uint8"):
        predictor.predict(np.zeros((1, 64, 64), dtype=np.float32))
    with pytest.raises(InputError, match="S3"):
        Predictor.from_checkpoint("s3://bucket/model.pt")


def test_untrained_model_warns(tiny_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="am.model.predict"):
        Predictor.from_checkpoint(tiny_model, device="cpu")
    assert sum("untrained" in r.getMessage() for r in caplog.records) == 1
