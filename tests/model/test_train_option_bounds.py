"""Options whose values would ask for more memory than any machine has are refused before anything is
read or rendered, with the value and what to give instead, not met as a numpy allocation traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import am.train.__main__ as train_cli
from am.model.build import TEST_DECODER_CHANNELS, TEST_ENCODER
from am.train.augment import MIN_SCALE, random_crop

TINY = ["--encoder", TEST_ENCODER, "--decoder-channels", ",".join(map(str, TEST_DECODER_CHANNELS)),
        "--crop", "64", "--batch-size", "2", "--device", "cpu", "--threads", "1"]


def _refused(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    monkeypatch.setattr(train_cli, "synthetic_images", lambda **kwargs: pytest.fail("images were rendered"))
    with pytest.raises(SystemExit) as stopped:
        train_cli.main(["--out", str(tmp_path / "m.pt"), *TINY, *args])
    assert stopped.value.code == 2
    assert not (tmp_path / "m.pt").exists()
    return capsys.readouterr().err


def test_a_zoom_near_0_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    err = _refused(tmp_path, capsys, monkeypatch, "--synthetic", "2", "--synthetic-valid", "1",
                   "--scale-min", "1e-6", "--scale-max", "1e-6")
    assert f"--scale-min 1e-06 is below {MIN_SCALE:g}" in err and "64000000 px a side" in err
    assert f"give --scale-min {MIN_SCALE:g} or more" in err


def test_random_crop_refuses_a_zoom_below_the_limit_and_takes_the_limit() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((40, 40), np.uint8)
    with pytest.raises(ValueError, match="at or above 0.25"):
        random_crop(rng, image, image, image, size=64, scale=(0.01, 1.0))
    crop, _, _ = random_crop(rng, image, image, image, size=64, scale=(MIN_SCALE, MIN_SCALE))
    assert crop.shape == (64, 64)


def test_a_synthetic_size_beyond_the_limit_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    err = _refused(tmp_path, capsys, monkeypatch, "--synthetic", "1", "--synthetic-valid", "1",
                   "--synthetic-size", "10000000")
    assert f"--synthetic-size 10000000 is above {train_cli.MAX_SYNTHETIC_SIZE}" in err
    assert f"give {train_cli.MAX_SYNTHETIC_SIZE} or less" in err


def test_synthetic_images_beyond_the_free_memory_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_cli, "free_memory", lambda device: 2**30)  # 1 GiB: 100 images of 4096 px hold 4.7
    err = _refused(tmp_path, capsys, monkeypatch, "--synthetic", "100", "--synthetic-valid", "1",
                   "--synthetic-size", "4096")
    assert "hold at least 4.7 GiB in memory, and this machine has 1.0 GiB free" in err


def test_the_help_says_validation_images_are_at_least_512_px(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "validation images are at least 512 px" in help_text
