"""Lattice masks with known mark ids, for registration tests and the registration benchmark.

Draws what a segmentation mask of an acquisition looks like, mark by mark, from an
:class:`am.synth.lattice.Lattice`, together with the true id of every mark pixel, so a
registration can be scored without a segmentation model in the loop::

    lat = Lattice.centred(rows=20, cols=20, width=800, height=800, pitch_x=35, angle_deg=4)
    drawn = draw_lattice_mask(lat, width=800, height=800, radius=9, shape="crescent",
                              missing=[5, 6], debris=10, rng=np.random.default_rng(0))
    accuracy = id_accuracy(drawn, register_mask(drawn.mask, rows=20, cols=20).ids)

The failure modes registration must survive each have a knob: missing marks (``missing``),
crescent and "C" shapes (``shape``), marks cut in two (``split``), neighbours joined by a bridge
(``merged``), blobs away from every node (``debris``), marks clipped by the image edge (place
the lattice so that it overhangs the image) and unevenly spaced rows (``lattice.with_uneven_rows``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
from scipy.spatial import cKDTree

from am.synth.lattice import Lattice

MARK_SHAPES = ("disc", "ellipse", "crescent", "thin_crescent", "c")
# The families of random grids ``benchmarks/register_fuzz.py`` draws (its docstring says how each is).
FUZZ_FAMILIES = ("uneven_small", "uneven_small_shear", "uneven_small_slide25", "large_uneven", "even")

# Drawing works in fixed point with this many fractional bits, so marks sit at sub-pixel positions.
_SHIFT = 4
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class LatticeMask:
    """A drawn mask and its ground truth.

    ``truth`` holds the true id on every mark pixel and 0 on background, debris and bridges;
    ``present`` lists the ids of marks that have at least one pixel inside the image.
    """

    mask: np.ndarray
    truth: np.ndarray
    present: np.ndarray
    lattice: Lattice


def _fixed(value: float) -> int:
    return int(round(value * _ONE))


def _draw_mark(patch: np.ndarray, cx: float, cy: float, *, radius: float, shape: str, angle_deg: float) -> None:
    """Draw one mark, value 1, centred at (cx, cy) in patch coordinates."""
    centre = (_fixed(cx), _fixed(cy))
    r = _fixed(radius)
    if shape == "disc":
        cv2.circle(patch, centre, r, 1, -1, cv2.LINE_8, _SHIFT)
    elif shape == "ellipse":
        axes = (_fixed(radius * 1.2), _fixed(radius * 0.75))
        cv2.ellipse(patch, centre, axes, angle_deg + 30.0, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)
    elif shape in ("crescent", "thin_crescent"):
        # A disc minus a disc shifted towards +x: the centroid of a thin crescent lies in the hole.
        offset, cut = (0.5, 0.9) if shape == "crescent" else (0.35, 1.0)
        theta = math.radians(angle_deg)
        cv2.circle(patch, centre, r, 1, -1, cv2.LINE_8, _SHIFT)
        hole = (_fixed(cx + offset * radius * math.cos(theta)), _fixed(cy + offset * radius * math.sin(theta)))
        cv2.circle(patch, hole, _fixed(cut * radius), 0, -1, cv2.LINE_8, _SHIFT)
    elif shape == "c":
        # An open ring; its opening faces +x of the lattice.
        thickness = max(2, int(round(radius * 0.45)))
        ring = _fixed(radius - thickness / 2.0)
        cv2.ellipse(patch, centre, (ring, ring), angle_deg, 50, 310, 1, thickness, cv2.LINE_8, _SHIFT)
    else:
        raise ValueError(f"unknown mark shape {shape!r}; use one of {', '.join(MARK_SHAPES)}")


def draw_lattice_mask(
    lattice: Lattice,
    *,
    width: int,
    height: int,
    radius: float,
    shape: str = "disc",
    missing: Iterable[int] = (),
    split: Iterable[int] = (),
    merged: Iterable[tuple[int, int]] = (),
    debris: int = 0,
    rng: np.random.Generator | None = None,
) -> LatticeMask:
    """Draw every node's mark except ``missing`` ids; see the module docstring for the knobs.

    ``split`` ids are cut in two by a 2 px line through their centre; each ``merged`` pair of ids
    is joined by a bridge as thick as half a mark; ``debris`` blobs land at random places at
    least a mark radius (plus their own size) away from every node, present or not.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    if shape not in MARK_SHAPES:
        raise ValueError(f"unknown mark shape {shape!r}; use one of {', '.join(MARK_SHAPES)}")
    nodes = lattice.nodes()
    missing_set = set(int(i) for i in missing)
    truth = np.zeros((height, width), np.uint16)
    half = int(math.ceil(radius * 1.3)) + 2
    size = 2 * half + 1
    patch = np.zeros((size, size), np.uint8)
    for index, (x, y) in enumerate(nodes):
        mark_id = index + 1
        if mark_id in missing_set:
            continue
        x0, y0 = int(math.floor(x)) - half, int(math.floor(y)) - half
        if x0 >= width or y0 >= height or x0 + size <= 0 or y0 + size <= 0:
            continue
        patch[:] = 0
        _draw_mark(patch, x - x0, y - y0, radius=radius, shape=shape, angle_deg=lattice.angle_deg)
        sx0, sy0 = max(0, -x0), max(0, -y0)
        sx1, sy1 = min(size, width - x0), min(size, height - y0)
        region = truth[y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1]
        region[patch[sy0:sy1, sx0:sx1] > 0] = mark_id
    for mark_id in split:
        x, y = nodes[int(mark_id) - 1]
        theta = rng.uniform(0, math.pi)
        dx, dy = math.cos(theta) * radius * 1.5, math.sin(theta) * radius * 1.5
        cv2.line(truth, (_fixed(x - dx), _fixed(y - dy)), (_fixed(x + dx), _fixed(y + dy)), 0, 2, cv2.LINE_8, _SHIFT)
    mask = np.where(truth > 0, np.uint8(255), np.uint8(0))
    # Bridges join points on the marks' bodies: a crescent's or a "C"'s centre is in its hole.
    body = 0.0 if shape in ("disc", "ellipse") else 0.75 * radius
    theta = math.radians(lattice.angle_deg)
    shift = np.array([-math.cos(theta), -math.sin(theta)]) * body
    for a, b in merged:
        (xa, ya), (xb, yb) = nodes[int(a) - 1] + shift, nodes[int(b) - 1] + shift
        bridge = max(2, int(round(radius * 0.5)))
        cv2.line(mask, (_fixed(xa), _fixed(ya)), (_fixed(xb), _fixed(yb)), 255, bridge, cv2.LINE_8, _SHIFT)
    _draw_debris(mask, nodes, count=debris, radius=radius, rng=rng)
    present_counts = np.bincount(truth.ravel(), minlength=len(nodes) + 1)
    present = np.nonzero(present_counts[1:])[0].astype(np.int64) + 1
    return LatticeMask(mask=mask, truth=truth, present=present, lattice=lattice)


def _draw_debris(mask: np.ndarray, nodes: np.ndarray, *, count: int, radius: float, rng: np.random.Generator) -> None:
    """Random blobs that touch no mark: each is at least radius + its own size + 2 px from every node."""
    if count <= 0:
        return
    height, width = mask.shape
    tree = cKDTree(nodes)
    placed, attempts = 0, 0
    while placed < count and attempts < count * 100:
        attempts += 1
        size = rng.uniform(0.3, 0.8) * radius
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        distance, _ = tree.query((x, y))
        if distance < radius * 1.3 + size + 2:
            continue
        axes = (_fixed(size), _fixed(size * rng.uniform(0.5, 1.0)))
        cv2.ellipse(mask, (_fixed(x), _fixed(y)), axes, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_8, _SHIFT)
        placed += 1


def wrong_ids(drawn: LatticeMask, ids: np.ndarray) -> np.ndarray:
    """True ids of the present marks whose pixels do not mostly carry that id in ``ids``."""
    fg = drawn.truth > 0
    true_ids = drawn.truth[fg].astype(np.int64)
    minlength = drawn.lattice.rows * drawn.lattice.cols + 1
    right = np.bincount(true_ids[ids[fg].astype(np.int64) == true_ids], minlength=minlength)
    total = np.bincount(true_ids, minlength=minlength)
    present = drawn.present
    return present[right[present] * 2 <= total[present]]


def id_accuracy(drawn: LatticeMask, ids: np.ndarray) -> float:
    """Fraction of present marks whose pixels mostly carry their true id in ``ids``."""
    if drawn.present.size == 0:
        return 1.0
    return 1.0 - wrong_ids(drawn, ids).size / drawn.present.size


def draw_fuzz_case(family: str, seed: int) -> tuple[LatticeMask, int, int, dict[str, Any]]:
    """The mask of the random grid ``seed`` of ``family``, its rows and cols, and its parameters.

    One drawing serves the fuzz benchmark and the tests that keep the grids it found numbered
    right: were the two written apart, a change to one would leave the tests checking grids the
    benchmark no longer draws, without a word.
    """
    if family not in FUZZ_FAMILIES:
        raise ValueError(f"unknown grid family {family!r}: expected one of {', '.join(FUZZ_FAMILIES)}")
    rng = np.random.default_rng([seed, 12345])
    few = family.startswith("uneven_small")
    rows = int(rng.integers(3, 6)) if few else int(rng.integers(6, 31)) if family == "large_uneven" \
        else int(rng.integers(3, 51))
    cols = int(rng.integers(5, 41)) if family != "even" else int(rng.integers(3, 51))
    pitch = float(rng.uniform(20, 60))
    if family == "even":  # images of at most a few megapixels
        while rows * cols * pitch * pitch > 2.5e6:
            pitch *= 0.9
        pitch = max(pitch, 20.0)
    angle = float(rng.uniform(-10, 10))
    radius = pitch * float(rng.uniform(0.15, 0.25))
    shape = str(rng.choice(["disc", "disc", "ellipse", "crescent", "c"]))
    margin = 2.0 * pitch
    shear = float(rng.uniform(-0.1, 0.1)) if family == "uneven_small_shear" else 0.0
    lattice = Lattice(rows, cols, pitch, pitch, angle, shear=shear)
    if family != "even":
        lattice = lattice.with_uneven_rows(rng, slide=0.25 if family == "uneven_small_slide25" else 0.2)
    nodes = lattice.nodes()
    low, high = nodes.min(axis=0), nodes.max(axis=0)
    width, height = (int(v) for v in np.ceil(high - low + 2 * margin))
    lattice = replace(lattice, origin_x=lattice.origin_x + margin - float(low[0]),
                      origin_y=lattice.origin_y + margin - float(low[1]))
    count = rows * cols
    n_missing = int(rng.binomial(count, float(rng.uniform(0.0, 0.1))))
    missing = (rng.choice(count, n_missing, replace=False) + 1).tolist() if n_missing else []
    debris = int(rng.integers(0, max(2, count // 10) + 1))
    drawn = draw_lattice_mask(lattice, width=width, height=height, radius=radius, shape=shape, missing=missing,
                              debris=debris, rng=rng)
    params = {"seed": seed, "rows": rows, "cols": cols, "pitch": round(pitch, 1), "angle": round(angle, 1),
              "missing": n_missing, "debris": debris}
    return drawn, rows, cols, params
