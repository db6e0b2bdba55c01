"""am.pseudolabel refuses a labelled crop too small for its part before any training, by its file, and names
labels by the files they were read from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import am.pseudolabel.__main__ as cli
import am.pseudolabel.core as core
from am.errors import InputError
from am.imageio import write_png
from am.pseudolabel.core import CropLabel, PseudoConfig, pseudo_label

FAST = PseudoConfig(small_encoder="tu-mobilenetv3_small_100", big_encoder="tu-mobilenetv3_small_100",
                    small_epochs=1, big_epochs=1, steps_per_epoch=1, batch_size=1, crop=64, threads=1)


def _mask(side: int) -> np.ndarray:
    mask = np.zeros((side, side), np.uint8)
    mask[: side // 2, : side // 2] = 255
    return mask


def _labels(folder: Path, sides: dict[str, int]) -> Path:
    for name, side in sides.items():
        write_png(folder / name, _mask(side))
    return folder


def test_a_held_out_label_under_32_px_is_refused_by_its_file(tmp_path: Path) -> None:
    folder = _labels(tmp_path / "labels", {"0_0.png": 64, "200_200.png": 24})
    with pytest.raises(InputError, match=r"label .*labels/200_200.png \(held out to validate both models: the last "
                                         r"by name\) is 24 x 24 px .*label a crop of at least 32 x 32 px"):
        cli.read_labels(folder)


def test_a_single_label_under_32_px_is_refused_too(tmp_path: Path) -> None:
    # The only crop validates both models as well as training them.
    folder = _labels(tmp_path / "labels", {"0_0.png": 24})
    with pytest.raises(InputError, match=r"labels/0_0.png \(the only one, which validates both models too\) is 24 x "
                                         r"24 px"):
        cli.read_labels(folder)


def test_a_training_label_under_8_px_is_refused_by_its_file(tmp_path: Path) -> None:
    folder = _labels(tmp_path / "labels", {"0_0.png": 3, "200_200.png": 64})
    with pytest.raises(InputError, match=r"label .*labels/0_0.png is 3 x 3 px \(height x width\): a crop trained on "
                                         r"needs at least 8 px on each side"):
        cli.read_labels(folder)
    (folder / "0_0.png").unlink()
    _labels(folder, {"0_0.png": 16})  # smaller than a training crop, yet a crop of a few marks
    assert [label.name for label in cli.read_labels(folder)] == ["0_0.png", "200_200.png"]


def test_a_library_caller_is_refused_before_any_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "train", lambda *a, **k: pytest.fail("training started"))
    image = np.random.default_rng(0).integers(0, 256, size=(96, 96), dtype=np.uint8)
    labels = [CropLabel(0, 0, _mask(32), name="0_0.png"), CropLabel(60, 60, _mask(24), name="60_60.png")]
    with pytest.raises(InputError, match=r"label 60_60.png \(held out .*\) is 24 x 24 px"):
        pseudo_label(image, labels, out_dir=tmp_path / "out", config=FAST)
    assert not (tmp_path / "out").exists()


def test_messages_name_the_files_the_labels_were_read_from() -> None:
    mask = _mask(32)
    first, held = CropLabel(0, 0, mask, name="000_000.tif"), CropLabel(16, 16, mask, name="016_016.TIFF")
    with pytest.raises(InputError, match=r"held-out crop 016_016.TIFF .* with the crop 000_000.tif,"):
        core.check_held_out_apart([first, held])
    with pytest.raises(InputError, match=r"the crops 000_000.tif and 016_016.TIFF overlap on 16 x 16 px"):
        core.check_labels_agree([CropLabel(0, 0, np.full_like(mask, 255), name="000_000.tif"),
                                 CropLabel(16, 16, np.zeros_like(mask), name="016_016.TIFF")])
