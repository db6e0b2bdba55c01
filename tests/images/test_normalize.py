"""Normalisation to 8-bit grey: bit depths, colour, degenerate images and bad values."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from am.errors import InputError
from am.normalize import normalize, to_grey

RNG = np.random.default_rng(11)


def test_8_bit_stretches_percentiles_to_full_range() -> None:
    image = RNG.integers(50, 150, (64, 80), dtype=np.uint8)
    out = normalize(image, low_pct=1.0, high_pct=99.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    lo, hi = np.percentile(image, [1.0, 99.0])
    assert (out[image <= lo] == 0).all()
    assert (out[image >= hi] == 255).all()
    # Monotone: a brighter input pixel is never darker in the output.
    order = np.argsort(image, axis=None, kind="stable")
    assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()


def test_16_bit_keeps_its_levels() -> None:
    image = RNG.integers(0, 4096, (256, 256), dtype=np.uint16)
    out = normalize(image)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert len(np.unique(out)) > 200
    assert out.min() == 0 and out.max() == 255


def test_16_bit_tiny_dynamic_range_uses_8_bit_range() -> None:
    image = (1000 + RNG.integers(0, 4, (100, 100))).astype(np.uint16)
    out = normalize(image)
    assert sorted(np.unique(out).tolist()) == [0, 85, 170, 255]
    np.testing.assert_array_equal(out, np.rint((image.astype(float) - 1000) * 85).astype(np.uint8))


def test_percentiles_are_exact_like_numpy() -> None:
    """The histogram percentiles must equal numpy's linear interpolation, not approximate it."""
    image = RNG.integers(0, 65536, (97, 101), dtype=np.uint16)
    lo, hi = np.percentile(image, [2.5, 97.5])
    out = normalize(image, low_pct=2.5, high_pct=97.5)
    expected = np.rint(np.clip((image.astype(np.float64) - lo) * 255.0 / (hi - lo), 0, 255)).astype(np.uint8)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("channels", [3, 4])
def test_colour_becomes_luminance_ignoring_alpha(channels: int) -> None:
    rgb = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image = rgb if channels == 3 else np.dstack([rgb, RNG.integers(0, 256, (30, 40), dtype=np.uint8)])
    grey = to_grey(image)
    expected = np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114])
    assert grey.dtype == np.uint8 and grey.shape == (30, 40)
    assert np.abs(grey.astype(int) - expected).max() <= 1
    out = normalize(image)
    np.testing.assert_array_equal(out, normalize(grey))
    if channels == 4:
        np.testing.assert_array_equal(out, normalize(rgb))


def test_16_bit_colour_keeps_16_bit_grey() -> None:
    plane = RNG.integers(0, 4096, (128, 128), dtype=np.uint16)
    image = np.dstack([plane, plane, plane])
    grey = to_grey(image)
    assert grey.dtype == np.uint16
    np.testing.assert_array_equal(grey, plane)
    assert len(np.unique(normalize(image))) > 200


def test_pure_colours_map_to_distinct_greys() -> None:
    image = np.zeros((3, 1, 3), np.uint8)
    image[0, 0, 0] = image[1, 0, 1] = image[2, 0, 2] = 255
    grey = to_grey(image)[:, 0].tolist()
    assert grey == [76, 150, 29]


def test_constant_image_gives_zeros_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="am.normalize"):
        out = normalize(np.full((10, 12), 777, np.uint16), name="flat.tif")
    assert out.shape == (10, 12) and out.dtype == np.uint8 and not out.any()
    assert "flat.tif is constant" in caplog.text


def test_sparse_bright_marks_fall_back_to_min_max(caplog: pytest.LogCaptureFixture) -> None:
    """A dark field with a few bright marks has equal 1st and 99th percentiles; the marks must survive."""
    image = np.zeros((100, 100), np.uint8)
    image[10:15, 10:15] = 200
    with caplog.at_level(logging.WARNING, logger="am.normalize"):
        out = normalize(image)
    assert out[12, 12] == 255 and out[50, 50] == 0
    assert "full range" in caplog.text


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(bad: float) -> None:
    image = RNG.random((20, 20)).astype(np.float32)
    image[3, 4] = bad
    image[5, 6] = bad
    with pytest.raises(InputError, match=r"scan\.tif has 2 pixel\(s\) with NaN or infinite values"):
        normalize(image, name="scan.tif")


def test_float_images_stretch() -> None:
    image = RNG.normal(0.5, 0.1, (50, 60)).astype(np.float32)
    out = normalize(image)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out.min() == 0 and out.max() == 255


def test_signed_integer_images_use_their_range() -> None:
    image = RNG.integers(-500, 500, (40, 40)).astype(np.int16)
    out = normalize(image, low_pct=0, high_pct=100)
    assert out[image == image.min()].max() == 0 and out[image == image.max()].min() == 255


def test_bool_image() -> None:
    image = RNG.random((20, 20)) > 0.5
    np.testing.assert_array_equal(normalize(image, low_pct=0, high_pct=100), image.astype(np.uint8) * 255)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((0, 5), np.uint8), "no pixels"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((4, 4), np.complex64), "pixel type"),
    ],
)
def test_bad_images_are_refused(image: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        normalize(image)


def test_bad_percentiles_are_refused() -> None:
    with pytest.raises(InputError, match="0 <= low < high <= 100"):
        normalize(np.zeros((4, 4), np.uint8), low_pct=50, high_pct=50)


def test_row_blocks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processing in many small blocks must not change a single pixel."""
    import am.normalize as module

    image = RNG.integers(0, 65536, (301, 257, 3), dtype=np.uint16)
    whole = normalize(image)
    monkeypatch.setattr(module, "BLOCK_PIXELS", 1000)
    np.testing.assert_array_equal(normalize(image), whole)


def _tissue_16_bit() -> np.ndarray:
    """A 16-bit scan whose tissue spans a few thousand levels, far from both ends of the range."""
    return (20000 + RNG.integers(0, 2040, (200, 200))).astype(np.uint16)


@pytest.mark.parametrize(("fill", "border"), [(0, 4), (0, 30), (65535, 12)])
def test_fill_or_glare_at_one_end_is_left_out_of_the_stretch(fill: int, border: int,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Zero fill around a mosaic (or saturated glare) over a few per cent of the frame: the tissue keeps
    its contrast instead of being squeezed into a dozen levels, and the fill goes to black (or white)."""
    tissue = _tissue_16_bit()
    framed = np.full((200 + 2 * border, 200 + 2 * border), fill, dtype=np.uint16)
    framed[border:-border, border:-border] = tissue
    with caplog.at_level(logging.INFO, logger="am.normalize"):
        out = normalize(framed, name="scan.tif")
    inner = out[border:-border, border:-border]
    assert np.abs(inner.astype(int) - normalize(tissue).astype(int)).max() <= 1
    assert len(np.unique(inner)) > 200
    assert set(np.unique(out[:border]).tolist()) == {0 if fill == 0 else 255}
    assert "scan.tif: " in caplog.text and f"level {fill}, set apart from the others" in caplog.text


def test_fill_in_a_float_image_is_left_out_too() -> None:
    tissue = RNG.uniform(0.2, 0.6, (200, 200)).astype(np.float32)
    framed = np.zeros((240, 240), dtype=np.float32)
    framed[20:-20, 20:-20] = tissue
    inner = normalize(framed)[20:-20, 20:-20]
    assert np.abs(inner.astype(int) - normalize(tissue).astype(int)).max() <= 1


def test_a_stretched_images_clipped_tails_are_kept_in_the_percentiles() -> None:
    """An 8-bit image stretched before (1 % of it at 0 and at 255, next to the levels above and below)
    is no fill: its percentiles are numpy's, as for any image."""
    image = np.clip(np.random.default_rng(5).normal(128, 45, (300, 300)), 0, 255).round().astype(np.uint8)
    assert (image == 0).mean() > 0.002 and (image == 255).mean() > 0.002
    lo, hi = np.percentile(image, [1.0, 99.0])
    expected = np.rint(np.clip((image.astype(np.float64) - lo) * 255.0 / (hi - lo), 0, 255)).astype(np.uint8)
    assert np.abs(normalize(image).astype(int) - expected.astype(int)).max() <= 1


def test_a_few_hot_pixels_are_no_glare() -> None:
    tissue = _tissue_16_bit()
    hot = tissue.copy()
    hot.ravel()[RNG.choice(hot.size, 40, replace=False)] = 65535  # 0.1 %: within the percentiles' own tail
    lo, hi = np.percentile(hot, [1.0, 99.0])
    expected = np.rint(np.clip((hot.astype(np.float64) - lo) * 255.0 / (hi - lo), 0, 255)).astype(np.uint8)
    assert np.abs(normalize(hot).astype(int) - expected.astype(int)).max() <= 1


def test_marks_drawn_at_one_flat_level_are_no_glare() -> None:
    """A rendered image's marks at one level, apart from the tissue's, are neither zero nor a sensor's
    saturation: they stay the top of the stretch, as they were."""
    image = np.random.default_rng(6).normal(90, 12, (200, 200)).clip(0, 255).astype(np.uint8)
    image[::20, :] = 200
    lo, hi = np.percentile(image, [1.0, 99.0])
    expected = np.rint(np.clip((image.astype(np.float64) - lo) * 255.0 / (hi - lo), 0, 255)).astype(np.uint8)
    assert np.abs(normalize(image).astype(int) - expected.astype(int)).max() <= 1


def _exact_stretch(image: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The stretch in exact integer arithmetic (Python ints): what normalize must give for lo..hi."""
    return np.array([[min(255, max(0, round((int(v) - lo) * 255 / (hi - lo)))) for v in row] for row in image],
                    dtype=np.uint8)


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64, np.uint64])
def test_wide_integer_colour_keeps_its_brightest_pixels_white(dtype: type) -> None:
    # The type's maximum rounded up in float32 (2**31 - 1 is 2**31) and wrapped to black.
    rgb = np.full((40, 40, 3), 1000, dtype)
    rgb[10:20, 10:20] = np.iinfo(dtype).max
    grey = to_grey(rgb)
    assert grey.dtype == dtype and grey[15, 15] > np.iinfo(dtype).max // 2 and grey[0, 0] == 1000
    out = normalize(rgb)
    assert (out[10:20, 10:20] == 255).all() and out[0, 0] == 0


@pytest.mark.parametrize(("dtype", "base"), [(np.uint32, 3_000_000_000), (np.int32, -2_000_000_000),
                                             (np.int64, 2**60), (np.uint64, 2**63 + 5)])
def test_wide_integer_levels_are_stretched_exactly(dtype: type, base: int) -> None:
    # float32 merged neighbouring 32-bit levels (64 levels came out as 26), and above 2**53 float64
    # made the stretch's ends one number (a ZeroDivisionError); 2**63 and up overflowed int64.
    levels = np.array([base + 100 * i for i in range(64)], dtype=dtype).reshape(8, 8)
    assert np.array_equal(normalize(levels, low_pct=0, high_pct=100),
                          _exact_stretch(levels, base, base + 6300))
    close = np.full((3, 3), base, dtype)
    close[1, 1] = base + 2
    out = normalize(close)
    assert out[1, 1] == 255 and int(out.sum()) == 255  # a single brighter pixel is kept, not lost to rounding
    narrow = np.array([base + i for i in range(4)], dtype=dtype).reshape(2, 2)
    assert normalize(narrow, low_pct=0, high_pct=100).ravel().tolist() == [0, 85, 170, 255]


def test_wide_integer_images_with_a_narrow_range_match_16_bit_ones(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 4096, (300, 300)).astype(np.uint16)
    image[:30] = 0  # zero fill, left out of the stretch in every type
    for dtype in (np.int32, np.uint32, np.int64, np.uint64):
        assert np.array_equal(normalize(image.astype(dtype)), normalize(image))
    fill = rng.integers(-5000, 5000, (200, 200)).astype(np.int32)
    fill[:20] = np.iinfo(np.int32).min  # the type's least level, as fill
    with caplog.at_level(logging.INFO, logger="am.normalize"):
        out = normalize(fill, name="fill.tif")
    assert (out[:20] == 0).all() and out[20:].max() == 255
    assert "its lowest level -2147483648, set apart from the others" in caplog.text


def test_a_constant_wide_integer_image_says_its_own_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="am.normalize"):
        out = normalize(np.full((5, 5), 2**62 + 7, np.int64), name="flat.tif")
    assert not out.any()
    assert f"flat.tif is constant (every pixel is {2**62 + 7})" in caplog.text
