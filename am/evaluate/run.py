"""Evaluate a model on labelled images: per-image and pooled scores, optional side-by-side PNGs.

Each image gets the mask the pipeline would write for it (:func:`am.model.whole.predict_image_mask`:
the pipeline's tiles, each tile's mask made as the checkpoint asks, stitched; optional rescale),
and is compared with its own mask::

    rows = evaluate(predictor, items, scale=1.0, side_by_side=Path("eval_png"))
    overall = Scores.combine([r.scores for r in rows])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from am.evaluate.lost import LostMarks, account
from am.evaluate.metrics import Scores, score_and_overlaps
from am.imageio import write_png
from am.model.predict import Predictor
from am.model.whole import predict_image_mask
from am.train.data import Labelled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageResult:
    name: str
    scores: Scores
    predicted: np.ndarray | None  # bool (H, W); None when evaluate() was told not to keep it
    lost: LostMarks


def evaluate(
    predictor: Predictor,
    items: Iterable[Labelled],
    *,
    scale: float = 1.0,
    tile_size: int | None = None,
    min_object_px: int = 0,
    side_by_side: Path | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    keep_predicted: bool = True,
) -> list[ImageResult]:
    """Score every item; with ``side_by_side`` also write ``<name>.png`` panels there.

    Names are made safe for a file name (``/`` becomes ``_``, a ``.png`` ending is not doubled); one
    that is then taken by an earlier image gets ``-2``, ``-3``... so that no panel overwrites another.

    ``items`` may be a generator that reads each image when it is reached; with ``keep_predicted``
    False no mask outlives its image's turn, so a folder of full-size images costs one image's memory.
    ``tile_size`` defaults to the one the checkpoint was trained and validated with.
    """
    tile_size = predictor.meta.tile_size if tile_size is None else tile_size
    results = []
    panel_names: set[str] = set()
    iterable: Iterable[Labelled] = items if progress is None else progress(items)
    for item in iterable:
        predicted = predict_image_mask(predictor, item.image, tile_size=tile_size, scale=scale)
        known = item.weight > 0
        scores, found = score_and_overlaps(item.mask * known, predicted * known, min_object_px=min_object_px)
        result = ImageResult(item.name, scores, predicted if keep_predicted else None, account(found))
        results.append(result)
        if side_by_side is not None:
            wanted = _panel_stem(item.name)
            panel = _unique(wanted, panel_names)
            if panel != wanted:
                log.warning("side-by-side: %s.png is taken by an earlier image, so %s is written as %s.png",
                            wanted, item.name, panel)
            write_png(Path(side_by_side) / (panel + ".png"), panels(item.image, item.mask, predicted))
    return results


def panels(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Image | truth | prediction | errors (green = both, red = predicted only, blue = missed), RGB uint8."""
    grey = np.repeat(image[:, :, None], 3, axis=2)
    t, p = truth > 0, predicted > 0
    as_rgb = [np.repeat((m * 255).astype(np.uint8)[:, :, None], 3, axis=2) for m in (t, p)]
    errors = (grey * 0.5).astype(np.uint8)
    errors[t & p] = (0, 200, 0)
    errors[~t & p] = (230, 40, 40)
    errors[t & ~p] = (40, 90, 255)
    gap = np.full((image.shape[0], 4, 3), 128, dtype=np.uint8)
    out = np.hstack([grey, gap, as_rgb[0], gap, as_rgb[1], gap, errors])
    if max(out.shape[:2]) < 400:  # small crops are easier to judge enlarged
        out = cv2.resize(out, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    return out


def table(results: list[ImageResult]) -> str:
    """A fixed-width table: one row per image, then the pooled and mean rows."""
    head = f"{'image':<40} {'dice':>6} {'iou':>6} {'prec':>6} {'recall':>6} {'F1':>6} {'true':>5} {'pred':>5}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(_row(r.name[-40:], r.scores))
    pooled = Scores.combine([r.scores for r in results])
    lines.append("-" * len(head))
    lines.append(_row("overall (pooled)", pooled))
    if results:
        mean_dice = float(np.mean([r.scores.dice for r in results]))
        mean_iou = float(np.mean([r.scores.iou for r in results]))
        lines.append(f"{'mean per image':<40} {mean_dice:6.4f} {mean_iou:6.4f}")
        lines.append(LostMarks.combine([r.lost for r in results]).summary())
    return "\n".join(lines)


def _row(name: str, s: Scores) -> str:
    return (f"{name:<40} {s.dice:6.4f} {s.iou:6.4f} {s.precision:6.4f} {s.recall:6.4f} {s.f1:6.4f} "
            f"{s.true_objects:5d} {s.predicted_objects:5d}")


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... if taken: two images must never share one panel file."""
    candidate, number = name, 1
    while candidate in used:
        number += 1
        candidate = f"{name}-{number}"
    used.add(candidate)
    return candidate


def _panel_stem(name: str) -> str:
    """The panel file's name before ``.png``: ``name`` made safe, less a ``.png`` it already ends with.

    Names of ``--data`` images carry their file's suffix; ``a.png`` must give ``a.png``, not ``a.png.png``.
    """
    safe = _safe(name)
    stem = safe[:-4] if safe.lower().endswith(".png") else safe
    return stem or "image"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_") or "image"
