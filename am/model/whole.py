"""Predict a whole image of any size with a :class:`Predictor` (evaluation, validation, mining, pseudo-labelling).

:func:`predict_image_mask` is the pipeline's segmentation in one process, made of the pipeline's
own pieces: the rescale of :func:`am.prepare.rescale`, the tile plan of :func:`am.tiling.plan_tiles`
(``tile_overlap`` 128 by default), tiles cut by :func:`am.tiling.read_tile` (an image smaller than a
tile reflect-padded to it, its masks made of the image part alone: :func:`am.prepare.tile_valid_extent`),
each tile's mask made by :meth:`Predictor.predict` as a worker makes it, stitched by
:class:`am.tiling.Stitcher` and brought back to the image's size by :func:`am.stitch.at_source_size`.
So every figure measured on it is that of the mask ``python -m am.pipeline`` writes for the image
with the same model, precision and settings.

:func:`predict_image_proba` is for consumers that need probabilities (pseudo-labelling, the
post-processing sweeps), which the pipeline never makes whole: reflect-pad to tile multiples,
overlapping windows, probabilities averaged with weights that fade towards each window's edge
(where context is missing), flat areas (:mod:`am.model.flat`) of the whole image blanked after
averaging, and an optional rescale before inference and back after, for marks far from the
training scale. Its thresholded map is close to, not the same as, the pipeline's mask::

    proba = predict_image_proba(predictor, image, scale=2.04)   # a half-resolution crop
    mask = predict_image_mask(predictor, image, scale=2.04)     # the mask the pipeline writes at --scale 2.04
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable

import cv2
import numpy as np

from am.errors import InputError
from am.model.checkpoint import tile_size_problem
from am.model.flat import flat_areas
from am.model.predict import Predictor
from am.prepare import check_image_size, rescale, tile_valid_extent
from am.settings import Settings
from am.stitch import at_source_size
from am.tiling import Stitcher, plan_tiles, read_tile

STRIDE = 32
# The resize factors predict_image_proba accepts (marks 20 times smaller or larger than trained on).
MIN_SCALE, MAX_SCALE = 0.05, 20.0
# Pixels by which neighbouring windows overlap, where the tile is large enough (over twice this).
DEFAULT_OVERLAP = 64
# The pipeline's own tile overlap (``tile_overlap`` of am.settings), which predict_image_mask plans with.
PIPELINE_OVERLAP = Settings.tile_overlap


def default_overlap(tile_size: int) -> int:
    """The overlap of windows of ``tile_size`` px: 64, or a quarter of the tile for tiles of 128 px
    and less (64 would be half of such a tile or more). Every tile size a checkpoint may hold
    (:func:`am.model.checkpoint.tile_size_problem`) thus validates and evaluates, and those over
    128 px keep the overlap their validation figures were measured with."""
    return DEFAULT_OVERLAP if tile_size > 2 * DEFAULT_OVERLAP else tile_size // 4


def pipeline_overlap(tile_size: int) -> int:
    """The ``tile_overlap`` the pipeline runs ``tile_size`` px tiles with by default: 128, or half the
    tile where 128 is more than the settings allow (tiles under 256 px)."""
    return min(PIPELINE_OVERLAP, tile_size // 2)


def predict_image_proba(
    predictor: Predictor,
    image: np.ndarray,
    *,
    tile_size: int = 512,
    overlap: int | None = None,
    scale: float = 1.0,
    progress: Callable[[Iterable, int, str], Iterable] | None = None,
) -> np.ndarray:
    """Mark probability per pixel, float32 of the image's own (H, W).

    ``image`` is 2-D uint8 (already normalised). ``scale`` > 1 enlarges the image before
    inference (marks too small for the model), < 1 shrinks it; the result is resized back.
    Flat areas of the image the model sees (after the rescale) are 0, as in the pipeline's
    masks. They are found on the whole image, after averaging: a window blanks only the flat
    squares it holds whole, so one that holds under 64 px of a flat area would average the
    model's answer there back in.
    ``overlap`` None is :func:`default_overlap` of ``tile_size``. ``progress`` (iterable, total,
    description) wraps the batches of windows, for a bar where a large image takes minutes.
    """
    _check_arguments(image, tile_size=tile_size, scale=scale)
    if overlap is None:
        overlap = default_overlap(tile_size)
    if not 0 <= overlap < tile_size // 2:
        raise InputError(f"overlap {overlap} must lie in [0, {tile_size // 2}): below half the tile size {tile_size}")
    height, width = image.shape
    work = image
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        work = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
    # Found before the windows' sums are allocated, so that the search's temporaries (four bytes
    # a pixel) are freed by then; only the bool result stays.
    flat = flat_areas(work)
    proba = _sliding(predictor, work, tile_size=tile_size, overlap=overlap, progress=progress)
    proba[flat] = 0.0
    del flat
    if scale != 1.0:
        proba = cv2.resize(proba, (width, height), interpolation=cv2.INTER_LINEAR if scale < 1 else cv2.INTER_AREA)
    return proba.astype(np.float32, copy=False)


def predict_image_mask(
    predictor: Predictor,
    image: np.ndarray,
    *,
    tile_size: int = 512,
    overlap: int | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """The mask (bool, the image's (H, W)) the pipeline writes for ``image`` (2-D uint8, already normalised).

    Evaluation, validation, mining and the benchmarks all measure this one mask, made as the
    pipeline makes it (see the module's docstring): tiles of ``tile_size`` planned with the
    pipeline's ``tile_overlap`` (``overlap`` None: :func:`pipeline_overlap`), each tile's mask made
    by the predictor at its own setting (post-processed where it is), each pixel taken from the tile
    that owns it, and at a ``scale`` other than 1 the image resized before and the mask after.
    Probabilities blended across windows and post-processed whole gave another mask: on an image
    smaller than a tile, a window of the image's own size where the workers see a reflect-padded
    full tile (crop2 of the real samples: Dice 0.38 against the pipeline's own mask).
    """
    _check_arguments(image, tile_size=tile_size, scale=scale)
    # The pipeline refuses such an image (its mask would be made of padding): no mask to reproduce.
    check_image_size(*image.shape, scale=scale, name="the image",
                     advice="use a larger crop, or a larger scale" if scale < 1 else "use a larger crop")
    if overlap is None:
        overlap = pipeline_overlap(tile_size)
    if not 0 <= overlap <= tile_size // 2:
        raise InputError(f"overlap {overlap} must lie in [0, {tile_size // 2}]: at most half the tile size {tile_size}")
    height, width = image.shape
    scaled = rescale(image, scale=scale)
    plan = plan_tiles(scaled.shape[0], scaled.shape[1], tile_size=tile_size, overlap=overlap)
    stitcher = Stitcher(plan)
    extent = tile_valid_extent(plan)
    step = max(1, predictor.batch_size)
    for start in range(0, len(plan.tiles), step):
        tiles = plan.tiles[start : start + step]
        extra = {} if extent is None else {"valid": [extent] * len(tiles)}
        masks = predictor.predict(np.stack([read_tile(scaled, tile, plan) for tile in tiles]), **extra)
        for tile, mask in zip(tiles, masks, strict=True):
            stitcher.add(tile.index, mask)
    del scaled  # at a large scale the resized image is the largest array here; the mask is made next
    return at_source_size(stitcher.finalize(), height, width) > 0


def _check_arguments(image: np.ndarray, *, tile_size: int, scale: float) -> None:
    """What both predictions take alike: a 2-D uint8 image, a tile size a checkpoint may hold, a scale in range.
    (Their overlaps differ: blended windows need some of each window's own, the pipeline's tiles may
    overlap by half.)"""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise InputError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    if problem := tile_size_problem(tile_size):
        raise InputError(problem)
    if problem := scale_problem(scale):
        raise InputError(problem)


def scale_problem(scale: float, *, name: str = "scale") -> str | None:
    """Why ``scale`` cannot resize an image for the model (None: it can): a finite factor in
    [MIN_SCALE, MAX_SCALE]. Commands check their --scale with this before any work."""
    if not (isinstance(scale, numbers.Real) and math.isfinite(scale) and MIN_SCALE <= scale <= MAX_SCALE):
        return f"{name} {scale} must lie between {MIN_SCALE} and {MAX_SCALE:g}"
    return None


def _sliding(predictor: Predictor, image: np.ndarray, *, tile_size: int, overlap: int,
             progress: Callable[[Iterable, int, str], Iterable] | None = None) -> np.ndarray:
    height, width = image.shape
    tile_h = min(tile_size, _ceil_to(height, STRIDE))
    tile_w = min(tile_size, _ceil_to(width, STRIDE))
    step_h, step_w = max(STRIDE, tile_h - overlap), max(STRIDE, tile_w - overlap)
    ys = _starts(height, tile_h, step_h)
    xs = _starts(width, tile_w, step_w)
    pad_h, pad_w = ys[-1] + tile_h - height, xs[-1] + tile_w - width
    padded = np.pad(image, ((0, pad_h), (0, pad_w)), mode="reflect" if min(height, width) > 1 else "edge")
    window = _window(tile_h, tile_w, overlap)
    total = np.zeros(padded.shape, dtype=np.float32)
    weight = np.zeros(padded.shape, dtype=np.float32)
    positions = [(y, x) for y in ys for x in xs]
    batch = max(1, predictor.batch_size)
    batches = range(0, len(positions), batch)
    for start in batches if progress is None else progress(batches, len(batches), "predicting the image"):
        chunk = positions[start : start + batch]
        tiles = np.stack([padded[y : y + tile_h, x : x + tile_w] for y, x in chunk])
        probs = predictor.predict_proba(tiles)
        for (y, x), prob in zip(chunk, probs, strict=True):
            total[y : y + tile_h, x : x + tile_w] += prob * window
            weight[y : y + tile_h, x : x + tile_w] += window
    # In place: a 20000 px image must not grow two more full-size float32 temporaries here.
    np.maximum(weight, 1e-6, out=weight)
    np.divide(total, weight, out=total)
    return total[:height, :width]


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _window(height: int, width: int, overlap: int) -> np.ndarray:
    """Weights rising linearly over ``overlap`` pixels from each edge, never zero."""
    def ramp(n: int) -> np.ndarray:
        if overlap <= 0:
            return np.ones(n, dtype=np.float32)
        idx = np.arange(n, dtype=np.float32)
        return np.clip(np.minimum(idx + 1, n - idx) / overlap, 0.05, 1.0)

    return np.outer(ramp(height), ramp(width)).astype(np.float32)
