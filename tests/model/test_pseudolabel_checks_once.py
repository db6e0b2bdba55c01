"""am.pseudolabel's architecture and memory checks run once per run, whoever calls: the command line before it
reads the image, :func:`pseudo_label` itself for any other caller."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import am.pseudolabel.__main__ as cli
import am.pseudolabel.core as core
from am.imageio import write_png
from am.model.build import write_test_checkpoint
from am.pseudolabel.core import CropLabel, PseudoConfig, pseudo_label
from am.train.loop import TrainResult

ENCODER = "tu-mobilenetv3_small_100"
FAST = PseudoConfig(small_encoder=ENCODER, big_encoder=ENCODER, small_epochs=1, big_epochs=1, steps_per_epoch=1,
                    batch_size=1, crop=64, threads=1)
FAST_OPTIONS = ["--small-encoder", ENCODER, "--big-encoder", ENCODER, "--small-epochs", "1", "--big-epochs", "1",
                "--steps-per-epoch", "1", "--batch-size", "1", "--crop", "64", "--threads", "1"]


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Calls of the two checks, under either module's name; training replaced by a stand-in that writes a tiny
    untrained checkpoint."""
    calls: Counter[str] = Counter()
    checkpoint = write_test_checkpoint(tmp_path / "stand-in.pt", seed=2).read_bytes()

    def train(config, train_items, valid_items, *, progress=None) -> TrainResult:
        config.out.write_bytes(checkpoint)
        config.out.with_suffix(".metrics.json").write_text("{}")
        return TrainResult(best_epoch=1, best_metrics={"dice": 0.5, "f1": 0.5}, history=[], checkpoint=config.out)

    for name in ("check_config", "check_memory"):
        real = getattr(core, name)

        def count(config: PseudoConfig, *, _name: str = name, _real=real) -> None:
            calls[_name] += 1
            _real(config)

        monkeypatch.setattr(core, name, count)
        monkeypatch.setattr(cli, name, count)
    monkeypatch.setattr(core, "train", train)
    return calls


def _image_and_labels() -> tuple[np.ndarray, list[CropLabel]]:
    image = np.random.default_rng(0).integers(0, 256, size=(96, 96), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    return image, [CropLabel(0, 0, mask, name="0_0.png"), CropLabel(40, 40, mask, name="40_40.png")]


def test_the_command_checks_the_config_once_before_reading_the_image(tmp_path: Path, counted: Counter[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    image, labels = _image_and_labels()
    write_png(tmp_path / "image.png", image)
    for label in labels:
        write_png(tmp_path / "labels" / label.name, label.mask)
    read_normalised = cli.read_normalised

    def read_after_the_checks(path: Path) -> np.ndarray:
        assert counted == {"check_config": 1, "check_memory": 1}, "the image was read before the checks"
        return read_normalised(path)

    monkeypatch.setattr(cli, "read_normalised", read_after_the_checks)
    assert cli.main([str(tmp_path / "image.png"), "--labels", str(tmp_path / "labels"), "--out",
                     str(tmp_path / "out"), *FAST_OPTIONS]) == 0
    assert counted == {"check_config": 1, "check_memory": 1}
    assert (tmp_path / "out" / "model.pt").is_file()


def test_a_library_caller_is_checked_once_too(tmp_path: Path, counted: Counter[str]) -> None:
    image, labels = _image_and_labels()
    pseudo_label(image, labels, out_dir=tmp_path / "out", config=FAST)
    assert counted == {"check_config": 1, "check_memory": 1}
