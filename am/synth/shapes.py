"""Mark shapes: boolean footprints of one ablation mark in its own frame.

Each function takes pixel coordinates relative to the mark centre, already rotated into the
mark's frame (``u`` along the opening of a crescent, ``v`` across it), and the mark radius in
pixels, and returns where the mark is. Shapes seen in real acquisitions: crescents and "C"s
(the laser's focus off-axis), chevrons, irregular blobs and notched "flags", elongated marks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ShapeFn = Callable[[np.ndarray, np.ndarray, float, np.random.Generator], np.ndarray]


def crescent(u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """A disk with an offset disk removed: thin or fat depending on the draw."""
    inner = r * rng.uniform(0.75, 1.0)
    shift = r * rng.uniform(0.25, 0.6)
    return (u * u + v * v <= r * r) & ((u - shift) ** 2 + v * v > inner * inner)


def c_shape(u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """An annulus with a gap facing +u."""
    inner = r * rng.uniform(0.4, 0.7)
    gap = np.radians(rng.uniform(35.0, 80.0))
    rho2 = u * u + v * v
    theta = np.abs(np.arctan2(v, u))
    return (rho2 <= r * r) & (rho2 >= inner * inner) & (theta >= gap)


def chevron(u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """Two thick strokes meeting at a point: the "<" marks of tightly focused lasers."""
    half_angle = np.radians(rng.uniform(28.0, 45.0))
    width = r * rng.uniform(0.25, 0.45)
    out = np.zeros(u.shape, dtype=bool)
    x0 = -0.6 * r
    for sign in (-1.0, 1.0):
        dx, dy = np.cos(half_angle), sign * np.sin(half_angle)
        along = (u - x0) * dx + v * dy
        across = np.abs(-(u - x0) * dy + v * dx)
        out |= (along >= 0) & (along <= 1.6 * r) & (across <= width / 2)
    return out


def blob(u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular, slightly elliptic blob (a wobbly radius in angle)."""
    theta = np.arctan2(v, u)
    aspect = rng.uniform(0.75, 1.0)
    radius = np.full(u.shape, r, dtype=np.float64)
    for k in (2, 3, 4):
        radius *= 1.0 + rng.uniform(0.0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return (u * u + (v / aspect) ** 2) <= radius * radius


def flag(u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """A blob with a bite taken out of one side (the notched marks of out-of-focus lasers)."""
    body = blob(u, v, r, rng)
    angle = rng.uniform(-0.5, 0.5)
    bite = r * rng.uniform(0.35, 0.6)
    cx, cy = r * np.cos(angle), r * np.sin(angle)
    return body & ((u - cx) ** 2 + (v - cy) ** 2 > bite * bite)


def elongated(u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """An ellipse two to three times longer than wide (a laser scanning while firing)."""
    aspect = rng.uniform(1.8, 3.0)
    a = r * 1.15
    b = a / aspect
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def split_parts(u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The whole mark and the thin gap across it (drawn as tissue, labelled as part of the mark)."""
    body = blob(u, v, r, rng)
    angle = rng.uniform(-0.8, 0.8)
    gap = max(2.0, r * rng.uniform(0.08, 0.2))  # under 2 px the gap blurs shut in the image
    offset = r * rng.uniform(-0.3, 0.3)
    across = u * np.cos(angle) + v * np.sin(angle) - offset
    return body, body & (np.abs(across) <= gap / 2)


def split(u: np.ndarray, v: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """A blob cut in two by a thin gap: one mark whose crater broke into two lobes."""
    body, gap = split_parts(u, v, r, rng)
    return body & ~gap


SHAPES: dict[str, ShapeFn] = {
    "crescent": crescent,
    "c": c_shape,
    "chevron": chevron,
    "blob": blob,
    "flag": flag,
    "elongated": elongated,
    "split": split,
}

PartsFn = Callable[[np.ndarray, np.ndarray, float, np.random.Generator], tuple[np.ndarray, np.ndarray]]

# Shapes drawn with unpainted pixels inside the mark, as (whole mark, gap): one ablation is one
# mark, so a label drawn by eye (and the real references, which join the lobes of crop2's marks)
# covers the gap too. Each draws the same random numbers as its entry in SHAPES.
PARTS: dict[str, PartsFn] = {"split": split_parts}

