"""The synthetic truth: how far each mark's label reaches, and how abutting marks stay apart.

The image a mark leaves is blurred; where its label stops is a convention (:data:`LABELS`), and
the one a model learns from decides the outlines it draws. These rules are kept apart from the
drawing so that every convention labels exactly the same image, and so that training
(:func:`between_labels`) weighs the tissue between marks by the same test that keeps labels apart.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from am.synth.render import Style

LABELS = ("visible", "footprint", "margin")
MARK_EDGE_SIGMA = 0.6  # px: every mark's edge is softened this much before the optics blur
OPTICS_MIN_BLUR = 0.2  # px: weaker optics blur is not applied
# A step blurred with sigma s falls to a quarter of its height 0.674 s outside the edge.
QUARTER_LEVEL = 0.25
QUARTER_LEVEL_SIGMAS = 0.674


def keep_apart(ids: np.ndarray) -> np.ndarray:
    """Leave a 1 px seam of tissue in the truth wherever two marks' pixels touch.

    Marks are drawn so that none overwrites another, but two may still abut (stacked "C" marks,
    crescents at a short pitch), and a 0/255 mask would join them into one object: the truth would
    count two marks as one, mark down a model that keeps them apart, and teach one that merges
    them. Each pixel next to a mark with a smaller id (8-neighbours) is left out, so no two marks
    share an 8-connected component and every mark keeps its pixels away from the seam.
    """
    if not ids.any():
        return ids
    fill = np.float32(ids.max() + 1)
    values = np.where(ids > 0, ids.astype(np.float32), fill)  # exact for any count of marks an image can hold
    smallest = cv2.erode(values, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=float(fill))
    return np.where((ids > 0) & (smallest < values), 0, ids).astype(ids.dtype)


def edge_sigma(style: Style) -> float:
    """The blur (px) a mark's edge shows in the image: its own softening and the optics'."""
    optics = style.blur if style.blur > OPTICS_MIN_BLUR else 0.0
    return math.hypot(MARK_EDGE_SIGMA, optics)


def label_reach(style: Style) -> float:
    """How far (px) beyond a straight edge of the drawn footprint the mark still shows a quarter of its contrast."""
    return QUARTER_LEVEL_SIGMAS * edge_sigma(style)


def visible_ids(ids: np.ndarray, style: Style) -> np.ndarray:
    """Grow every mark to where its blurred footprint still reaches a quarter of its contrast.

    The footprint's edge is where the blurred mark is at half its contrast; a person labelling
    the image draws the outline further out, where the mark fades into the tissue, and at least
    one pixel out (the 4-neighbours of the footprint), which matches the reference masks of the
    real crops. Thresholding the mark's own blurred footprint moves the label's edge as smoothly
    as the image's edge moves with the blur. A margin rounded up to whole pixels did not: it
    stepped from 1 to 2 px at a blur of 1.36 px, where the image changes by a tenth of a pixel, so
    images just past the step carried a ring of truth no model can tell from the image. Pixels
    next to another mark stay unlabelled: marks the drawing kept apart stay apart in the truth, so
    a model trained on it learns to separate close marks rather than merge them.
    """
    footprint = (ids > 0).astype(np.uint8)
    if not footprint.any():
        return ids
    shown = cv2.GaussianBlur(footprint.astype(np.float32), (0, 0), edge_sigma(style)) >= QUARTER_LEVEL
    beside = cv2.dilate(footprint, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))) > 0
    # Far enough to hold every pixel whose centre lies within the reach of the footprint's edge,
    # which is half a pixel beyond the centres of its outer pixels.
    side = 2 * max(1, math.ceil(label_reach(style) + 0.5)) + 1
    return _grow_apart(ids, np.ones((side, side), np.uint8), allowed=shown | beside)


def label_margin(style: Style) -> int:
    """The ``"margin"`` convention: the reach of :func:`label_reach` rounded up to whole pixels (1 or 2 here).

    Kept so that the recorded training stages of the shipped model (``make model``) draw the
    truth they were trained on; :func:`visible_ids` says why ``"visible"`` no longer rounds.
    """
    return max(1, math.ceil(label_reach(style)))


def grow_ids(ids: np.ndarray, margin: int) -> np.ndarray:
    """Grow every mark by ``margin`` px into unlabelled pixels, never so far that it touches another mark."""
    if margin <= 0:
        return ids
    return _grow_apart(ids, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1)))


def _grow_apart(ids: np.ndarray, kernel: np.ndarray, *, allowed: np.ndarray | None = None) -> np.ndarray:
    """Grow every mark over ``kernel`` into unlabelled pixels (only ``allowed`` ones, when given),
    leaving out any grown pixel with another mark among its 8 neighbours."""
    unlabelled = ids == 0
    # OpenCV dilates no int32 ids (a scene's ids, see am.synth.render.ID_DTYPE): grow them in float32,
    # exact below am.synth.render.MAX_IDS, which render refuses to exceed, and give them back their type.
    nearest = cv2.dilate(ids.astype(np.float32), kernel)
    grown = np.where(unlabelled, nearest, ids).astype(ids.dtype)
    if allowed is not None:
        grown[unlabelled & ~allowed] = 0
    grown[unlabelled & (grown > 0) & between_labels(grown, reach=1)] = 0
    return grown


def between_labels(labels: np.ndarray, *, reach: int) -> np.ndarray:
    """Pixels with two different non-zero labels within ``reach`` px (a square window).

    The one test behind both keeping grown labels apart (:func:`visible_ids`) and finding the tissue
    between close marks that training weighs (:func:`am.train.data.weigh_gaps`).
    """
    window = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    values = labels.astype(np.float32)  # exact for any count of marks an image can hold
    fill = np.float32(values.max() + 1)
    highest = cv2.dilate(values, window)
    lowest = cv2.erode(np.where(labels > 0, values, fill), window)
    return (highest > 0) & (lowest < fill) & (highest != lowest)
