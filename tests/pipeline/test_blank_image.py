"""A blank source image (one value, or values one grey level apart) is refused before any worker starts,
naming the file, its values and what to check; real and synthetic microscopy, however faint, is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

import am.orchestrator
from am.dataset import DatasetLayout
from am.errors import InputError
from am.imageio import read_image
from am.normalize import check_not_blank, to_grey
from am.orchestrator import run_pipeline
from am.prepare import check_group_pixels
from am.settings import Settings
from am.synth.dataset import write_dataset
from tests.real_samples import real_samples

SETTINGS = Settings(tile_size=64, tile_overlap=16)
RNG = np.random.default_rng(8)


@pytest.mark.parametrize(("image", "values"), [
    (np.full((120, 130), 77, np.uint8), r"every pixel is 77, uint8 pixels"),
    (np.zeros((120, 130), np.uint16), r"every pixel is 0, uint16 pixels"),
    (np.full((120, 130, 3), (10, 200, 30), np.uint8), r"every pixel is 124, uint8 pixels"),  # colour, as grey
    (RNG.integers(4000, 4002, (120, 130), dtype=np.uint16), r"its pixels span only 4000\.\.4001, uint16 pixels"),
    (np.full((120, 130), 0.25, np.float32), r"every pixel is 0\.25, float32 pixels"),
    (np.float32(1000) + RNG.integers(0, 2, (120, 130)).astype(np.float32) * np.spacing(np.float32(1000)),
     r"its pixels span only 1000\.0\.\.1000\.0000610\d*, float32 pixels"),
], ids=["constant 8-bit", "black 16-bit", "constant colour", "one level of noise", "constant float", "float ulp"])
def test_a_blank_image_is_refused_naming_its_values(image: np.ndarray, values: str) -> None:
    with pytest.raises(InputError, match=rf"^scan\.tif is blank \({values}\): it holds no marks to segment\. "
                                         r"Check the image and how it was exported .* export it again"):
        check_not_blank(to_grey(image), "scan.tif")


@pytest.mark.parametrize("image", [
    RNG.integers(100, 103, (120, 130), dtype=np.uint16),  # three levels: the least that passes
    np.where(RNG.random((120, 130)) < 0.001, 2, 0).astype(np.uint8),  # a dozen faint specks on black
    RNG.normal(3e-6, 1e-7, (120, 130)).astype(np.float32),  # faint, in tiny units
    (RNG.random((120, 130)) * 5 + 500).astype(np.float32),
], ids=["three levels", "few specks", "tiny float units", "faint float"])
def test_low_contrast_images_pass(image: np.ndarray) -> None:
    check_not_blank(to_grey(image), "faint.tif")


def test_the_real_and_synthetic_samples_pass(tmp_path: Path) -> None:
    names = sorted(real_samples().glob("*_image.png")) + sorted(real_samples().glob("tile_*.png"))
    assert names
    for path in names:
        check_not_blank(to_grey(read_image(path)), str(path))
    # The `make run` sample, and a 16-bit one.
    write_dataset(tmp_path / "synth", rows=50, cols=50, seed=7)
    write_dataset(tmp_path / "synth16", rows=12, cols=12, seed=3, bit_depth=16)
    for root in (tmp_path / "synth", tmp_path / "synth16"):
        layout = DatasetLayout(root)
        for group in layout.groups(None):
            check_group_pixels(layout, group)


def test_the_pipeline_refuses_a_blank_image_before_any_worker_starts(tmp_path: Path, tiny_model: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "ds" / "source" / "g1"
    source.mkdir(parents=True)
    tifffile.imwrite(source / "image.tif", np.full((300, 320), 1234, np.uint16))
    monkeypatch.setattr(am.orchestrator, "open_backend", lambda *a, **k: pytest.fail("a backend was opened"))
    with pytest.raises(InputError, match=rf"^image {source / 'image.tif'} is blank \(every pixel is 1234, uint16 "
                                         r"pixels\).*leave the group out$"):
        run_pipeline(tmp_path / "ds", settings=SETTINGS.replace(model=str(tiny_model)), register=False,
                     cache_dir=tmp_path / "cache", show_progress=False)
    assert not (tmp_path / "ds" / "tiles").exists() and not (tmp_path / "ds" / "source_norm").exists()


def test_a_rerun_reusing_its_tiles_does_not_decode_the_image_again(tmp_path: Path, tiny_model: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write_dataset(tmp_path / "ds", rows=6, cols=6, seed=5)
    settings = SETTINGS.replace(model=str(tiny_model), workers=1)
    first = run_pipeline(tmp_path / "ds", settings=settings, register=False, cache_dir=tmp_path / "cache",
                         show_progress=False)
    assert first.tiles > 0
    monkeypatch.setattr(am.orchestrator, "check_group_pixels",
                        lambda *a, **k: pytest.fail("the pixels of a reused group were read again"))
    again = run_pipeline(tmp_path / "ds", settings=settings, register=False, cache_dir=tmp_path / "cache",
                         show_progress=False)
    assert again.tiles_reused == again.tiles == first.tiles
