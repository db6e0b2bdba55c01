"""Normalisation stage: turn any source image into the 8-bit grey image the model and tiles use.

Colour becomes grey by luminance; then the image's own low and high percentiles are stretched
to 0..255, so faint 16-bit scans and bright 8-bit ones reach the model alike. Percentiles are
taken at the source's own bit depth (an exact histogram for 8/16-bit), and all work runs in
row blocks, so a 20000 x 20000 16-bit scan needs no full-size float copy::

    norm = normalize(read_image(path), low_pct=1.0, high_pct=99.0, name=str(path))  # (H, W) uint8
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from am.errors import InputError
from am.imageio import read_image

log = logging.getLogger(__name__)

# Pixels per processing block: bounds the temporaries (e.g. bincount's int64 copy) to a few tens of MB.
BLOCK_PIXELS = 1 << 22
# ITU-R BT.601 luma weights, as OpenCV uses for RGB -> grey.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Integer images spanning at most this many levels get an exact histogram; wider ones are subsampled.
MAX_HISTOGRAM_LEVELS = 1 << 24
# Pixels kept when percentiles of a float (or very wide integer) image come from a strided subsample.
SAMPLE_PIXELS = 1 << 22
# The least spread (max - min) an integer image must have to hold anything to segment: values one level
# apart are a blank frame's quantisation noise, not marks (real images span tens of levels or more).
MIN_INTEGER_SPREAD = 2
# The same for floating-point pixels, relative to their magnitude: a smaller spread is float32 rounding.
MIN_FLOAT_SPREAD = 1e-6
# Fill and glare: the image's lowest level, where it is zero (fill), or its highest, where it is a
# sensor's saturation (2**k - 1 for 8 to 16 bits, the type's maximum, 1.0 for floats), is left out of
# the percentiles where it holds at least this share of the pixels and lies apart from every other
# level, further than FILL_GAP_FACTOR times the usual step between the levels the image uses. Zero
# fill around a mosaic or a rotated scan, or a saturated glare, over a few per cent of a 16-bit image
# would otherwise be the 1st or 99th percentile, and the tissue's few thousand levels would be
# squeezed into a dozen output levels. A stretched image's clipped tails sit next to the levels
# above them, and a mark's blurred edge fills the levels between it and the tissue: both are kept.
# So are marks drawn at one flat level that is neither (a rendered test image's).
FILL_MIN_FRACTION = 0.005
FILL_GAP_FACTOR = 4
SATURATION_BITS = range(8, 17)


def normalize(
    image: np.ndarray,
    *,
    low_pct: float = 1.0,
    high_pct: float = 99.0,
    name: str = "image",
) -> np.ndarray:
    """Return ``image`` as 2-D uint8 grey of the same height and width, contrast-stretched.

    Values at or below the ``low_pct`` percentile become 0 and those at or above ``high_pct``
    become 255, linearly in between. If both percentiles coincide but the image is not constant
    (a mostly empty field), the full min..max range is stretched instead; a constant image gives
    zeros. Both cases log a warning. ``name`` (usually the file) is used in messages. Raises
    InputError for NaN/inf values, an empty image or an unsupported shape or dtype.
    """
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise InputError(
            f"percentiles low={low_pct!r}, high={high_pct!r} for {name} are not allowed: use 0 <= low < high <= 100"
        )
    grey = to_grey(image, name=name)
    check_finite(grey, name)
    source_dtype = grey.dtype
    grey, base = _above_least(grey)
    lo, hi = _percentiles(grey, low_pct, high_pct, name=name, source_dtype=source_dtype, base=base)
    if not hi > lo:
        mn, mx = _min_max(grey)
        if mn == mx:
            log.warning("%s is constant (every pixel is %s); its normalised image is all zeros", name, mn + base)
            return np.zeros(grey.shape, dtype=np.uint8)
        log.warning(
            "%s: the %s and %s percentiles are both %s; stretching its full range %s..%s instead",
            name, low_pct, high_pct, _level_text(lo, base), mn + base, mx + base,
        )
        lo, hi = float(mn), float(mx)
    log.debug("%s: stretching %s..%s (above %s) to 0..255", name, lo, hi, base)
    return _stretch(grey, lo, hi)


def read_normalised(path: Path) -> np.ndarray:
    """An image file as the model sees it in the pipeline, at the default percentiles.

    Every tool that judges or labels an image the user gives it (evaluation, the real-sample
    report, pseudo-labelling) reads it through here, so its figures are those of the pipeline's
    input and not of the file as stored, which may not be stretched at all.
    """
    return normalize(read_image(path), name=str(path))


def to_grey(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """2-D grey version of ``image`` at its own bit depth: colour by luminance (alpha ignored).

    Integer colour images give the same integer dtype (rounded luminance), floats give float32,
    booleans give uint8 0/1. A 2-D input is returned as is, without a copy.
    """
    image = np.asarray(image)
    if image.dtype == np.bool_:
        image = image.view(np.uint8)
    if image.dtype.kind not in "uif":
        raise InputError(f"{name} has pixel type {image.dtype}; expected integer or floating-point pixels")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        if image.size == 0:
            raise InputError(f"{name} has no pixels (shape {image.shape})")
        return image.astype(np.float32, copy=False) if image.dtype.kind == "f" else image
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputError(f"{name} has shape {image.shape}; expected (H, W) grey or (H, W, 3|4) colour")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"{name} has no pixels (shape {image.shape})")
    is_float = image.dtype.kind == "f"
    out = np.empty(image.shape[:2], dtype=np.float32 if is_float else image.dtype)
    # float32 holds 8- and 16-bit levels exactly; wider integers need float64, or their levels merge
    # and their top rounds past the type's maximum (2**31 - 1 is 2**31 in float32) and wraps to black.
    work = np.float64 if not is_float and image.dtype.itemsize >= 4 else np.float32
    weights = np.asarray(LUMA_WEIGHTS, dtype=work)
    limits = None if is_float else _float_limits(image.dtype, work)
    for r0, r1 in _row_blocks(image.shape[0], image.shape[1]):
        luma = image[r0:r1, :, :3].astype(work) @ weights
        if limits is not None:
            np.rint(luma, out=luma)
            np.clip(luma, *limits, out=luma)
        out[r0:r1] = luma
    return out


def _float_limits(dtype: np.dtype, work: type) -> tuple[float, float]:
    """The least and greatest floats of type ``work`` that cast back into integer ``dtype`` unchanged.

    A type's own maximum may have no float of its own (2**63 - 1 is 2**63 in float64): the float below
    it is taken, so that clipping never overflows the cast back."""
    info = np.iinfo(dtype)
    high = work(info.max)
    if int(high) > info.max:
        high = np.nextafter(high, work(0))
    return float(work(info.min)), float(high)


def _above_least(grey: np.ndarray) -> tuple[np.ndarray, int]:
    """A 32- or 64-bit integer image as its levels above its least one, and that least level.

    Floats cannot place such levels: above 2**53 neighbouring ones are one float64 (a stretch of
    0 px width), and float32 merges 32-bit ones. Their differences to the least level are exact in
    unsigned integers, and narrower ones take the exact 16-bit histogram and table. Other images
    are returned as they are, with 0.
    """
    if grey.dtype.kind not in "ui" or grey.dtype.itemsize < 4:
        return grey, 0
    mn, mx = _min_max(grey)
    spread = mx - mn
    narrow = next(t for t in (np.uint16, np.uint32, np.uint64) if spread <= np.iinfo(t).max)
    least = np.uint64(mn % (1 << 64))
    out = np.empty(grey.shape, dtype=narrow)
    for r0, r1 in _row_blocks(*grey.shape):
        # Modulo 2**64, as unsigned arithmetic wraps: exact, since every difference lies in 0..spread.
        out[r0:r1] = grey[r0:r1].astype(np.uint64) - least
    return out, int(mn)


def _row_blocks(height: int, width: int) -> list[tuple[int, int]]:
    step = max(1, BLOCK_PIXELS // max(1, width))
    return [(r0, min(height, r0 + step)) for r0 in range(0, height, step)]


def check_finite(grey: np.ndarray, name: str) -> None:
    """Refuse a float image with NaN or infinite pixels (no stretch can place them), naming ``name``;
    integer images pass. Shared with the task API, which refuses such an upload before it is a task."""
    if grey.dtype.kind != "f":
        return
    bad = sum(int(np.count_nonzero(~np.isfinite(grey[r0:r1]))) for r0, r1 in _row_blocks(*grey.shape))
    if bad:
        raise InputError(
            f"{name} has {bad} pixel(s) with NaN or infinite values; replace them (for example with the "
            "background level) and save the image again"
        )


def check_not_blank(grey: np.ndarray, name: str) -> None:
    """Refuse a grey image (:func:`to_grey`'s, finite) with essentially no information, naming ``name``.

    Such an image (:func:`blank_values`) has no marks to find, yet :func:`normalize` would still
    stretch it and the pipeline segment it, to say only at the end that its mask is empty; a
    caller checks it before any worker starts. A low-contrast image is no such case: the spread of a few
    levels it needs is far below any real microscopy's, and the percentile stretch brings it out.
    """
    values = blank_values(grey)
    if values is None:
        return
    raise InputError(
        f"{name} is blank ({values}, {grey.dtype} pixels): it holds no marks to segment. Check the image and "
        "how it was exported (the right file, channel or frame; no contrast setting or bit-depth conversion that "
        "flattened it), then export it again, or leave the group out"
    )


def blank_values(grey: np.ndarray) -> str | None:
    """What makes a grey image (:func:`to_grey`'s, finite) blank ("every pixel is 7"), or None where it is not.

    Blank means every pixel has the same value, or (integer pixels) they differ by one level at most
    (:data:`MIN_INTEGER_SPREAD`), or (floating point) by no more than float rounding
    (:data:`MIN_FLOAT_SPREAD` of their magnitude).
    """
    mn, mx = _min_max(grey)
    spread = mx - mn
    if grey.dtype.kind == "f":
        blank = spread <= MIN_FLOAT_SPREAD * max(abs(mn), abs(mx))
    else:
        blank = spread < MIN_INTEGER_SPREAD
    if not blank:
        return None
    return f"every pixel is {mn}" if spread == 0 else f"its pixels span only {mn}..{mx}"


def _min_max(grey: np.ndarray) -> tuple[float | int, float | int]:
    blocks = _row_blocks(*grey.shape)
    mn = min(grey[r0:r1].min() for r0, r1 in blocks)
    mx = max(grey[r0:r1].max() for r0, r1 in blocks)
    return mn.item(), mx.item()


def _percentiles(grey: np.ndarray, low_pct: float, high_pct: float, *, name: str = "image",
                 source_dtype: np.dtype | None = None, base: int = 0) -> tuple[float, float]:
    """The two percentiles with numpy's default (linear) interpolation, exact for integer images, over
    the pixels that are not fill or glare (:data:`FILL_MIN_FRACTION`). ``grey`` may hold an image of
    ``source_dtype`` as its levels above ``base`` (:func:`_above_least`); the percentiles are then above it too."""
    dtype = grey.dtype if source_dtype is None else source_dtype
    if grey.dtype.kind in "ui":
        counts, offset = _histogram(grey)
        if counts is not None:
            used = np.flatnonzero(counts)
            for index in _fill_levels(used, counts[used], name=name, offset=offset + base, dtype=dtype):
                counts[used[index]] = 0
            cumulative = np.cumsum(counts)
            return (
                offset + _histogram_percentile(cumulative, low_pct),
                offset + _histogram_percentile(cumulative, high_pct),
            )
    step = max(1, int(np.ceil(np.sqrt(grey.size / SAMPLE_PIXELS))))
    sample = grey[::step, ::step].astype(np.float64).ravel()
    levels, level_counts = np.unique(sample, return_counts=True)
    fill = levels[_fill_levels(levels, level_counts, name=name, dtype=dtype, offset=base)]
    if fill.size:
        sample = sample[~np.isin(sample, fill)]
    lo, hi = np.percentile(sample, [low_pct, high_pct])
    return float(lo), float(hi)


def _fill_levels(levels: np.ndarray, counts: np.ndarray, *, name: str, dtype: np.dtype,
                 offset: int = 0) -> list[int]:
    """Indices into ``levels`` (the levels an image uses, ascending, with their pixel ``counts``) of its
    lowest and highest level where they are fill or glare (:data:`FILL_MIN_FRACTION`); logged.

    At most the two ends go, and only while other levels remain, so what is left always has pixels.
    """
    if levels.size < 3:
        return []
    gaps = np.diff(levels)
    apart = FILL_GAP_FACTOR * float(np.median(gaps))
    least = FILL_MIN_FRACTION * float(counts.sum())
    low, high = _fill_values(dtype)
    ends = ((0, float(gaps[0]), "lowest"), (levels.size - 1, float(gaps[-1]), "highest"))
    fill = [index for index, gap, _ in ends
            if counts[index] >= least and gap > apart
            and _level(levels[index], offset) in (low if index == 0 else high)]
    for index, _, which in ends:
        if index in fill:
            log.info("%s: %.1f %% of its pixels are at its %s level %s, set apart from the others (fill or "
                     "glare): left out of the contrast stretch", name, 100.0 * counts[index] / counts.sum(), which,
                     _level_text(levels[index], offset))
    return fill


def _fill_values(dtype: np.dtype) -> tuple[frozenset[float], frozenset[float]]:
    """The levels fill may have (zero, or the type's least) and those glare saturates at."""
    if dtype.kind == "f":
        return frozenset({0.0}), frozenset({1.0})
    info = np.iinfo(dtype)
    saturated = {2**bits - 1 for bits in SATURATION_BITS if 2**bits - 1 <= info.max}
    return frozenset({0, int(info.min)}), frozenset({*saturated, int(info.max)})


def _level(level: float, offset: int) -> float | int:
    """A level found above ``offset``, as the source holds it: exact for integers of any width."""
    return int(level) + offset if float(level).is_integer() else float(level) + offset


def _level_text(level: float, offset: int = 0) -> str:
    value = _level(level, offset)
    return str(value) if isinstance(value, int) else f"{value:g}"


def _histogram(grey: np.ndarray) -> tuple[np.ndarray | None, int]:
    """Exact value counts and the value of bin 0, or (None, 0) if the range is too wide to count."""
    blocks = _row_blocks(*grey.shape)
    if grey.dtype in (np.uint8, np.uint16):
        offset, levels = 0, int(np.iinfo(grey.dtype).max) + 1
    else:
        mn, mx = _min_max(grey)
        if mx - mn >= MAX_HISTOGRAM_LEVELS:
            return None, 0
        offset, levels = int(mn), int(mx - mn) + 1
    counts = np.zeros(levels, dtype=np.int64)
    for r0, r1 in blocks:
        block = grey[r0:r1].ravel()
        if offset:
            block = block.astype(np.int64) - offset  # 8- and 16-bit only: wider ones start at 0 (_above_least)
        counts += np.bincount(block, minlength=levels)
    return counts, offset


def _histogram_percentile(cumulative: np.ndarray, pct: float) -> float:
    n = int(cumulative[-1])
    rank = pct / 100.0 * (n - 1)
    k0 = int(np.floor(rank))
    k1 = min(k0 + 1, n - 1)
    # The k-th smallest value (0-based) is the first level whose cumulative count exceeds k.
    v0 = int(np.searchsorted(cumulative, k0, side="right"))
    v1 = int(np.searchsorted(cumulative, k1, side="right"))
    return v0 + (rank - k0) * (v1 - v0)


def _stretch(grey: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = np.empty(grey.shape, dtype=np.uint8)
    scale = 255.0 / (hi - lo)
    if grey.dtype in (np.uint8, np.uint16):
        # One lookup table over every possible level: exact, fast and free of float temporaries.
        levels = np.arange(int(np.iinfo(grey.dtype).max) + 1, dtype=np.float64)
        lut = np.rint(np.clip((levels - lo) * scale, 0.0, 255.0)).astype(np.uint8)
        for r0, r1 in _row_blocks(*grey.shape):
            out[r0:r1] = np.take(lut, grey[r0:r1])
        return out
    for r0, r1 in _row_blocks(*grey.shape):
        # float32 merges the levels of 32-bit integers (above 2**24) before the stretch can part them.
        wide = grey.dtype.itemsize > 4 or (grey.dtype.kind in "ui" and grey.dtype.itemsize >= 4)
        block = grey[r0:r1].astype(np.float64 if wide else np.float32)
        block -= lo
        block *= scale
        np.clip(block, 0.0, 255.0, out=block)
        np.rint(block, out=block)
        out[r0:r1] = block
    return out


__all__ = ["check_finite", "check_not_blank", "normalize", "read_normalised", "to_grey"]
