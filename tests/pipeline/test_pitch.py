"""The marks' pitch read from the image before segmentation, and the warning where it is far from
the model's scale (the real tile_b enlarged 4 times: every mark came out in pieces)."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from am.dataset import DatasetLayout
from am.imageio import read_image
from am.normalize import read_normalised
from am.pitch import MIN_LAG_PX, _window_constants, estimate_pitch, suggested_scale, warn_if_off_scale
from am.prepare import prepare_group
from am.register.testing import draw_lattice_mask
from am.settings import Settings
from am.synth.dataset import write_dataset
from am.synth.lattice import Lattice
from tests.real_samples import real_sample


def real(name: str) -> np.ndarray:
    return read_normalised(real_sample(name))


@pytest.mark.parametrize("pitch", [24.0, 40.0, 70.0])
def test_the_pitch_of_a_synthetic_acquisition(tmp_path, pitch):
    (source,) = write_dataset(tmp_path / "ds", rows=14, cols=14, seed=3, pitch=pitch)
    assert estimate_pitch(read_image(source)) == pytest.approx(pitch, rel=0.04)


def test_the_pitch_of_the_real_tiles_and_crops():
    # tile_b's columns are 67.6 px apart (its rows 43-90 px, unevenly); the crops' marks about 37 px
    # at their half resolution. tile_a shows too few marks (4 x 7 on half the tile) to count.
    assert estimate_pitch(real("tile_b_512.png")) == pytest.approx(67.6, abs=1.5)
    for crop in ("crop1", "crop2", "crop3"):
        assert 30 < estimate_pitch(real(f"{crop}_image.png")) < 40


def test_large_images_are_read_from_a_window_of_fixed_size():
    tile = real("tile_b_512.png")
    enlarged = cv2.resize(tile, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    assert estimate_pitch(enlarged) == pytest.approx(4 * 67.6, rel=0.04)
    assert estimate_pitch(np.tile(tile, (6, 6))) == pytest.approx(67.6, abs=1.5)


def _lattice_image(size: int, pitch: float, angle: float, shape: str) -> np.ndarray:
    lattice = Lattice.centred(rows=int(size / pitch) + 8, cols=int(size / pitch) + 8, width=size, height=size,
                              pitch_x=pitch, pitch_y=pitch, angle_deg=angle)
    drawn = draw_lattice_mask(lattice, width=size, height=size, radius=pitch * 0.27, shape=shape)
    blurred = cv2.GaussianBlur(drawn.mask, (0, 0), 1.0)
    noise = np.random.default_rng(0).normal(60, 15, blurred.shape)
    return (blurred * 0.6 + noise).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("size, pitch, angle, shape", [
    (2048, 25, 0, "disc"),        # read as 50: shrunk 2x, the peak at 12.5 px split over two pixels
    (2048, 45, 0, "crescent"),    # read as 90
    (2048, 12, 0, "disc"),        # read as 17, so --scale auto kept 1 instead of 3.8
    (2048, 60, -10, "crescent"),  # read as 134 (a diagonal), so --scale auto shrank the image 3 times
    (2048, 35, 7, "crescent"),    # read as 78
    (512, 20, -10, "crescent"),   # read as 72 on a single tile
])
def test_the_shortest_vector_is_read_not_the_strongest(size, pitch, angle, shape):
    """A longer lattice vector often correlates best; the shortest strong peak is the pitch."""
    assert estimate_pitch(_lattice_image(size, pitch, angle, shape)) == pytest.approx(pitch, rel=0.05)


def test_marks_too_far_apart_for_the_full_resolution_window_are_read_shrunk():
    """The full-resolution window holds lags up to a quarter of 1024 px; wider lattices need the shrunk one."""
    assert estimate_pitch(_lattice_image(2048, 300, 3, "disc")) == pytest.approx(300, rel=0.05)


def test_windows_of_one_size_share_their_taper_and_lags_read_only():
    """Post-processing reads the pitch of every 512 px tile, so the window's constants are computed once."""
    taper, usable = _window_constants((48, 64))
    assert _window_constants((48, 64))[0] is taper
    assert np.allclose(taper, np.outer(np.hanning(48), np.hanning(64)))
    assert usable.shape == (48, 64) and not usable[24, 32] and usable[24, 32 + MIN_LAG_PX + 1]
    with pytest.raises(ValueError):
        taper[0, 0] = 1.0
    with pytest.raises(ValueError):
        usable[0, 0] = True
    lattice = np.zeros((256, 256), np.uint8)
    lattice[::32, ::32] = 255
    lattice = cv2.dilate(lattice, np.ones((9, 9), np.uint8))
    assert estimate_pitch(lattice) == estimate_pitch(lattice) == pytest.approx(32, abs=0.5)


def test_no_lattice_no_pitch():
    rng = np.random.default_rng(0)
    assert estimate_pitch(rng.normal(128, 30, (800, 800)).clip(0, 255).astype(np.uint8)) is None
    texture = cv2.GaussianBlur(rng.normal(128, 30, (800, 800)).astype(np.float32), (0, 0), 4)
    assert estimate_pitch(texture) is None
    assert estimate_pitch(np.full((600, 600), 9, np.uint8)) is None
    assert estimate_pitch(np.zeros((10, 10), np.uint8)) is None


def test_marks_far_from_the_model_scale_are_named_with_the_scale_to_use(caplog):
    enlarged = cv2.resize(real("tile_b_512.png"), None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    with caplog.at_level(logging.INFO, logger="am.pitch"):
        warn_if_off_scale(enlarged, scale=1.0, name="group g")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and warnings[0].startswith("group g: marks about 27")
        assert f"rerun with --scale {suggested_scale(4 * 67.6):g}" in warnings[0]
        assert suggested_scale(4 * 67.6) == pytest.approx(0.17)
        caplog.clear()
        # At that scale the model sees them as it was trained to.
        warn_if_off_scale(enlarged, scale=0.17, name="group g")
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]
        assert "at --scale 0.17" in caplog.records[0].getMessage()


def test_preparing_a_group_reads_its_pitch(tmp_path, caplog):
    write_dataset(tmp_path / "ds", rows=10, cols=10, seed=1, pitch=36.0)
    layout = DatasetLayout(tmp_path / "ds")
    with caplog.at_level(logging.INFO, logger="am.pitch"):
        prepare_group(layout, "group01", settings=Settings(), model_id="m")
    assert any(r.getMessage().startswith("group group01: marks about 3") for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
