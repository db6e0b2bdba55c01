"""A full-resolution refinement grows on a trained U-Net without changing its output, then learns."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from am.errors import CheckpointError, InputError
from am.model.build import TEST_DECODER_CHANNELS, TEST_ENCODER, build_model
from am.model.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from am.model.predict import Predictor, prepare_input
from am.model.refine import RefinedUnet, grow_refinement
from am.train.data import Labelled, synthetic_images
from am.train.loop import TrainConfig, train
from tests.model.test_widen import trained_like

PLAIN = ModelMeta(encoder=TEST_ENCODER, encoder_depth=5, decoder_channels=TEST_DECODER_CHANNELS)
REFINED = replace(PLAIN, refine_channels=6)
TINY = {"encoder": TEST_ENCODER, "encoder_depth": 5, "decoder_channels": TEST_DECODER_CHANNELS}


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randint(0, 256, (2, 1, 64, 96), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)


@pytest.fixture(scope="module")
def images() -> list[Labelled]:
    return synthetic_images(count=4, size=128, seed=13)


def test_grown_refinement_computes_what_the_unet_did_and_then_learns(pixels: torch.Tensor) -> None:
    plain = trained_like(PLAIN, seed=7)
    refined = build_model(REFINED)
    assert isinstance(refined, RefinedUnet)
    grow_refinement(refined, plain.state_dict())
    x = prepare_input(pixels, PLAIN)
    with torch.no_grad():
        assert torch.equal(refined.eval()(x), plain(x))
    # The U-Net's tensors keep their names, so its part of the state is the plain model's state.
    own = refined.state_dict()
    assert all(torch.equal(own[name], t) for name, t in plain.state_dict().items())
    # The zero correction gets a gradient from the first step, and so reaches the image.
    refined.train()
    (refined(x).sigmoid() * torch.linspace(0, 1, 96)).mean().backward()
    assert refined.refine.out.weight.grad.abs().sum() > 0
    optimizer = torch.optim.SGD(refined.refine.parameters(), lr=1.0)
    optimizer.step()
    with torch.no_grad():
        assert not torch.equal(refined.eval()(x), plain(x))


def test_refinement_grows_only_on_its_own_unet() -> None:
    refined = build_model(REFINED)
    other = build_model(replace(PLAIN, decoder_channels=(32, 16, 8, 8, 8))).state_dict()
    with pytest.raises(ValueError, match="not this model's U-Net"):
        grow_refinement(refined, {**trained_like(PLAIN, seed=7).state_dict(), "extra.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="size mismatch"):
        grow_refinement(refined, other)


def test_refined_checkpoint_round_trips_and_predicts(tmp_path: Path, pixels: torch.Tensor) -> None:
    model = trained_like(REFINED, seed=7)
    path = tmp_path / "refined.pt"
    save_checkpoint(path, model, replace(REFINED, trained=True), storage="fp16")
    meta, state = load_checkpoint(path)
    assert meta.refine_channels == 6 and any(name.startswith("refine.") for name in state)
    predictor = Predictor.from_checkpoint(path, device="cpu", threads=1, precision="fp32", postprocess=False)
    probabilities = predictor.predict(pixels[:, 0].numpy())
    assert probabilities.shape == (2, 64, 96) and np.isfinite(probabilities).all()
    # Old checkpoints have no such field and stay plain U-Nets; nonsense widths are refused.
    assert ModelMeta.from_dict({"encoder": TEST_ENCODER}).refine_channels == 0
    for bad in (-1, 1.5, True, 1000):
        with pytest.raises(CheckpointError, match="refine_channels"):
            replace(PLAIN, refine_channels=bad)


def test_training_grows_a_refinement_from_a_plain_checkpoint(
        tmp_path: Path, images: list[Labelled], caplog: pytest.LogCaptureFixture) -> None:
    base = dict(**TINY, epochs=1, steps_per_epoch=1, batch_size=2, crop=64, warmup_steps=0, threads=1, half=False)
    plain = tmp_path / "plain.pt"
    train(TrainConfig(out=plain, **base), images[:3], images[3:])
    _, start = load_checkpoint(plain)
    grown = tmp_path / "grown.pt"
    with caplog.at_level(logging.INFO, logger="am.train.init"):
        train(TrainConfig(out=grown, **base, refine_channels=6, init=plain, lr=0.0, seed=3), images[:3], images[3:])
    meta, weights = load_checkpoint(grown)
    assert meta.refine_channels == 6 and meta.training["refine_channels"] == 6
    assert "full-resolution refinement of 6 channels (same output at start)" in caplog.text
    # lr 0: the U-Net comes back as it was and the correction is still zero.
    learnt = [k for k in start if "running_" not in k and "num_batches" not in k]
    assert all(torch.equal(weights[k], start[k]) for k in learnt)
    assert torch.count_nonzero(weights["refine.out.weight"]) == 0
    # A refined checkpoint continues only as itself.
    with pytest.raises(InputError, match="refinement 6 channels wide, not 4"):
        train(TrainConfig(out=tmp_path / "x.pt", **base, refine_channels=4, init=grown), images[:3], images[3:])
    wider = {**base, "decoder_channels": (32, 16, 8, 8, 8)}
    with pytest.raises(InputError, match="a refined model starts only from the same decoder"):
        train(TrainConfig(out=tmp_path / "x.pt", **wider, refine_channels=6, init=plain, init_partial=True),
              images[:3], images[3:])
    with pytest.raises(InputError, match="--refine-channels 6"):
        train(TrainConfig(out=tmp_path / "y.pt", **base, init=grown), images[:3], images[3:])


def test_refinement_branch_can_learn_at_its_own_rate(tmp_path: Path) -> None:
    from am.train.loop import _param_groups

    model = build_model(REFINED)
    branch = {id(p) for p in model.refine.parameters()}
    one = _param_groups(model, TrainConfig(out=tmp_path / "a.pt", **TINY, refine_channels=6))
    assert len(one) == 1 and len(one[0]["params"]) == len(list(model.parameters()))
    two = _param_groups(model, TrainConfig(out=tmp_path / "b.pt", **TINY, refine_channels=6, refine_lr=3e-3))
    assert {id(p) for p in two[1]["params"]} == branch and two[1]["lr"] == 3e-3
    assert not branch & {id(p) for p in two[0]["params"]}
    assert len(two[0]["params"]) + len(two[1]["params"]) == len(list(model.parameters()))
