"""An architecture that cannot run on the meta device (mit_b0) has its training step counted on the
CPU instead, on small crops, extrapolated to the crop asked; where no count is possible the memory is
left unchecked with a warning, never a traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import am.train.__main__ as train_cli
import am.train.fits as fits
from am.model.build import TEST_DECODER_CHANNELS, TEST_ENCODER
from am.model.checkpoint import ModelMeta

TINY = ModelMeta(encoder=TEST_ENCODER, decoder_channels=TEST_DECODER_CHANNELS)
MIT = ModelMeta(encoder="mit_b0", decoder_channels=(16, 8, 8, 8, 4))


def test_mit_b0_is_counted_on_the_cpu_as_a_real_crop_of_its_size_counts() -> None:
    torch.set_num_threads(1)
    with pytest.raises(RuntimeError):
        fits._count(MIT, 64, torch.device("meta"))  # the reason for the CPU count
    counted = fits.step_memory(MIT, 256)
    values, parameters = fits._count(MIT, 256, torch.device("cpu"))  # the crop itself, counted in full
    # Its attention maps grow with the area's square: a count scaled by the area alone would be far below.
    assert counted.per_crop == pytest.approx(4 * values, rel=0.01)
    assert counted.fixed == fits.PARAMETER_COPIES * 4 * parameters


def test_the_cpu_count_of_a_convolution_network_agrees_with_the_meta_count() -> None:
    torch.set_num_threads(1)
    meta_values, meta_parameters = fits._count(TINY, 512, torch.device("meta"))
    values, parameters = fits._count_on_cpu(TINY, 512)
    assert parameters == meta_parameters
    assert meta_values <= values <= 1.02 * meta_values  # never below: a refusal must stay certain


def test_a_model_that_runs_nowhere_leaves_the_memory_unchecked_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def fail(meta: ModelMeta, crop: int, device: torch.device) -> tuple[int, int]:
        raise NotImplementedError(f"no kernel on {device.type}")

    monkeypatch.setattr(fits, "_count", fail)
    monkeypatch.setattr(fits, "free_memory", lambda device: 2**30)
    with caplog.at_level(logging.WARNING, logger="am.train.fits"):
        assert fits.step_memory_problem(TINY, batch_size=10**6, crop=256, device=torch.device("cpu")) is None
    assert "could not be counted (NotImplementedError: no kernel on cpu)" in caplog.text
    assert "--batch-size 1000000 and --crop 256 are not checked" in caplog.text


def test_am_train_checks_the_memory_of_mit_b0_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_cli, "synthetic_images", lambda **kwargs: pytest.fail("images were rendered"))
    with pytest.raises(SystemExit) as stopped:
        train_cli.main(["--out", str(tmp_path / "m.pt"), "--synthetic", "4", "--encoder", "mit_b0",
                        "--decoder-channels", "16,8,8,8,4", "--batch-size", "10000000", "--crop", "256",
                        "--device", "cpu", "--threads", "1"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "training with --batch-size 10000000 and --crop 256 needs about" in err and "Traceback" not in err
