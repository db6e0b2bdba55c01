"""Render synthetic post-MALDI microscopy with exact masks and mark ids.

Stage: training and demo data. A :class:`Style` is drawn once per image (pitch, angle, mark
shape and polarity, background texture, illumination, blur, distractors); :func:`render`
places one mark per present lattice node and returns the image with its ground truth::

    rng = np.random.default_rng(7)
    style = random_style(rng)
    lat = Lattice.centred(rows=20, cols=20, width=800, height=800,
                          pitch_x=style.pitch, angle_deg=style.angle_deg)
    scene = render(lat, style, width=800, height=800, rng=rng)
    scene.image      # float32 in [0, 1]
    scene.mask       # uint8 0/255, the drawn marks as far as they show
    scene.ids        # int32, row * cols + col + 1 under each mark, 0 elsewhere

Labels follow the convention of :data:`am.synth.truth.LABELS`: by default (``"visible"``) a mark's label reaches
out to where its blurred footprint still shows a quarter of its contrast (at least the pixels
beside the drawn footprint, about 1 px) and covers the whole mark, the thin gap between the lobes
of a split mark included, which is how people draw marks and how the reference masks of the real samples in
``shared/data/real`` are drawn; ``"footprint"`` keeps exactly the drawn pixels; ``"margin"`` is the
earlier visible extent, rounded up to whole pixels, on which the shipped model's recorded
training stages ran.

Distractors (out-of-focus bright blobs, dark holes, debris, fibres) are drawn into the image
and never into the mask: the model must learn that they are not marks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from am.synth.lattice import Lattice
from am.synth.shapes import PARTS, SHAPES
from am.synth.truth import (
    LABELS,
    MARK_EDGE_SIGMA,
    OPTICS_MIN_BLUR,
    grow_ids,
    keep_apart,
    label_margin,
    visible_ids,
)

POLARITIES = ("bright", "dark", "rim", "grey", "flat", "crater", "outlined")
# How often each polarity is drawn: bright marks are the commonest in real acquisitions. "crater"
# and "outlined" came last and are drawn only when a mix names them, so that every seed keeps the
# images it had.
POLARITY_MIX = {"bright": 0.4, "dark": 0.1, "rim": 0.18, "grey": 0.14, "flat": 0.18, "crater": 0.0, "outlined": 0.0}
# Width of an "outlined" mark's dark wall, in px at the training scale (crop2's is 1-2 px at half resolution).
OUTLINE_WIDTH = (1.5, 4.0)
FLAT_MIN_OFFSET = 0.07  # smallest brightness step of a "flat" mark, on the [0, 1] scale
# Mark ids are int32: a training tile or held-out image of 4096 px at the smallest pitch (8 px) is
# rendered on a lattice of about 820 x 820 nodes, far more ids than uint16 holds. The truth rules
# grow and compare ids in float32 (OpenCV's morphology takes no int32), exact up to this many.
ID_DTYPE = np.int32
MAX_IDS = 2**24


@dataclass(frozen=True)
class Style:
    """How one synthetic image looks; lengths in pixels, intensities on a [0, 1] scale."""

    pitch: float = 36.0
    pitch_ratio: float = 1.0  # pitch_y / pitch_x
    angle_deg: float = 0.0
    shear: float = 0.0
    mark_radius: float = 11.0
    shape: str = "crescent"
    mixed_shapes: bool = False
    mark_angle_deg: float = 180.0
    polarity: str = "bright"
    contrast: float = 0.35
    mark_texture: float = 0.08
    jitter: float = 0.04  # node position noise, in pitches
    size_jitter: float = 0.1
    missing: float = 0.02
    background: float = 0.25
    speckle: float = 0.25
    speckle_scale: float = 1.2
    texture: float = 0.1
    fibres: float = 0.0
    illumination: float = 0.15
    blur: float = 0.6
    noise: float = 0.03
    bright_blobs: float = 0.0  # per megapixel
    dark_holes: float = 0.0  # per megapixel
    dark_patches: float = 0.0  # strength of large dark tissue patches
    shadow: float = 0.0  # darkening of a crescent just outside each mark, on one side
    debris: float = 0.0  # per megapixel

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape {self.shape!r} is not one of {', '.join(SHAPES)}")
        if self.polarity not in POLARITIES:
            raise ValueError(f"polarity {self.polarity!r} is not one of {', '.join(POLARITIES)}")


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # float32 (H, W) in [0, 1]
    mask: np.ndarray  # uint8 (H, W) 0/255
    ids: np.ndarray  # int32 (H, W), 0 = background; am.synth dataset writes it as 16-bit ids.png
    lattice: Lattice
    present: np.ndarray  # bool (rows*cols,): node carries a drawn mark inside the image


def random_style(
    rng: np.random.Generator,
    *,
    pitch_range: tuple[float, float] = (20.0, 85.0),
    max_angle_deg: float = 10.0,
    blob_rate: float = 1.0,
    polarity_mix: Mapping[str, float] | None = None,
) -> Style:
    """Draw a style covering what real acquisitions show, from tidy to hard.

    ``blob_rate`` multiplies how many out-of-focus bright blobs an image gets (when it gets any);
    ``polarity_mix`` (relative weights by polarity, default :data:`POLARITY_MIX`) lets training
    dwell on the polarities a model gets wrong. Neither changes which random numbers are drawn,
    so the defaults give the styles of any other run and a new mix changes only the polarities.
    """
    pitch = float(np.exp(rng.uniform(math.log(pitch_range[0]), math.log(pitch_range[1]))))
    shape = str(rng.choice(list(SHAPES), p=[0.22, 0.15, 0.12, 0.18, 0.15, 0.08, 0.1]))
    mix = POLARITY_MIX if polarity_mix is None else polarity_mix
    polarity = str(rng.choice(POLARITIES, p=polarity_probabilities(mix)))
    fill = rng.uniform(0.28, 0.45) if shape in ("blob", "flag", "elongated") else rng.uniform(0.3, 0.48)
    background = rng.uniform(0.08, 0.55)
    speckle = rng.uniform(0.05, 0.45)
    return Style(
        pitch=pitch,
        pitch_ratio=float(rng.uniform(0.85, 1.2)),
        angle_deg=float(rng.uniform(-max_angle_deg, max_angle_deg)),
        shear=float(rng.uniform(-0.06, 0.06)),
        mark_radius=float(pitch * fill),
        shape=shape,
        mixed_shapes=bool(rng.random() < 0.1),
        mark_angle_deg=float(rng.choice([0.0, 90.0, 180.0, 270.0]) + rng.uniform(-40, 40)),
        polarity=polarity,
        # Marks stay visible through the speckle: a person could label every one of them.
        contrast=float(rng.uniform(0.12, 0.45) + 0.6 * speckle),
        mark_texture=float(rng.uniform(0.0, 0.15)),
        jitter=float(rng.uniform(0.0, 0.06)),
        size_jitter=float(rng.uniform(0.03, 0.15)),
        # Now and then no marks at all: empty tissue must stay empty.
        missing=float(rng.choice([0.0, 0.02, 0.1, 0.3, 1.0], p=[0.28, 0.37, 0.2, 0.1, 0.05])),
        background=float(background),
        speckle=float(speckle),
        speckle_scale=float(rng.uniform(0.7, 2.0)),
        texture=float(rng.uniform(0.0, 0.25)),
        fibres=float(rng.choice([0.0, rng.uniform(0.05, 0.25)], p=[0.6, 0.4])),
        illumination=float(rng.uniform(0.0, 0.35)),
        blur=float(rng.uniform(0.0, 1.6)),
        noise=float(rng.uniform(0.0, 0.06)),
        bright_blobs=float(rng.choice([0.0, rng.uniform(1.0, 15.0)], p=[0.4, 0.6])) * blob_rate,
        dark_holes=float(rng.choice([0.0, rng.uniform(5.0, 80.0)], p=[0.5, 0.5])),
        dark_patches=float(rng.choice([0.0, rng.uniform(0.1, 0.5)], p=[0.6, 0.4])),
        shadow=float(rng.choice([0.0, rng.uniform(0.1, 0.4)], p=[0.6, 0.4])),
        debris=float(rng.choice([0.0, rng.uniform(5.0, 80.0)], p=[0.5, 0.5])),
    )


def polarity_probabilities(mix: Mapping[str, float]) -> list[float]:
    """Probabilities in :data:`POLARITIES` order from relative weights; unnamed polarities get 0."""
    unknown = sorted(set(mix) - set(POLARITIES))
    if unknown:
        raise ValueError(f"polarity {', '.join(unknown)} is not one of {', '.join(POLARITIES)}")
    weights = [float(mix.get(name, 0.0)) for name in POLARITIES]
    if min(weights) < 0 or not math.isfinite(sum(weights)) or sum(weights) <= 0:
        raise ValueError(f"polarity weights must be >= 0 with a positive sum, got {dict(mix)}")
    return [w / sum(weights) for w in weights]


def render(
    lattice: Lattice,
    style: Style,
    *,
    width: int,
    height: int,
    rng: np.random.Generator,
    labels: str = "visible",
) -> Scene:
    """Draw the marks of ``lattice`` in ``style`` on a fresh background of ``height`` x ``width``.

    ``labels`` (one of :data:`LABELS`) changes the truth only: the image is the same either way.
    """
    if labels not in LABELS:
        raise ValueError(f"labels {labels!r} is not one of {', '.join(LABELS)}")
    if lattice.rows * lattice.cols > MAX_IDS:
        raise ValueError(f"a {lattice.rows} x {lattice.cols} lattice has more than {MAX_IDS} nodes, "
                         "more mark ids than the truth rules keep exact; render a smaller lattice")
    image = _background(style, width, height, rng)
    ids, gaps, present = _draw_ids(lattice, style, width, height, rng)
    drawn = np.where(gaps, ID_DTYPE(0), ids)
    image = _paint_marks(image, drawn, style, rng)
    image = _distractors(image, style, rng)
    image = _optics(image, style, rng)
    if labels == "visible":
        ids = visible_ids(ids, style)
    elif labels == "margin":
        ids = grow_ids(ids, label_margin(style))
    else:
        ids = drawn
    ids = keep_apart(ids)
    present &= np.isin(np.arange(1, len(present) + 1), ids)
    mask = np.where(ids > 0, np.uint8(255), np.uint8(0))
    return Scene(image=image, mask=mask, ids=ids, lattice=lattice, present=present)


def to_bit_depth(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Quantise a [0, 1] image to uint8 or uint16 (16-bit keeps a 12-bit-camera-like range)."""
    if bit_depth == 8:
        return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if bit_depth == 16:
        return np.clip(np.rint(image * 4095.0 + 100.0), 0, 65535).astype(np.uint16)
    raise ValueError(f"bit depth must be 8 or 16, got {bit_depth}")


# -- background ---------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed at ``sigma`` px (computed small and upscaled when coarse)."""
    if sigma >= 6:
        step = max(1, int(sigma / 3))
        small = rng.standard_normal((height // step + 2, width // step + 2)).astype(np.float32)
        small = cv2.GaussianBlur(small, (0, 0), sigma / step)
        field = cv2.resize(small, (width + step, height + step), interpolation=cv2.INTER_CUBIC)[:height, :width]
    else:
        field = rng.standard_normal((height, width)).astype(np.float32)
        if sigma > 0:
            field = cv2.GaussianBlur(field, (0, 0), sigma)
    std = float(field.std())
    return field / std if std > 0 else field


def _background(style: Style, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    img = np.full((height, width), style.background, dtype=np.float32)
    # Speckle: bright grains with dark gaps, skewed like the tissue and matrix crystals.
    grains = _smooth_noise(rng, height, width, style.speckle_scale)
    grains = np.maximum(grains, -1.5) + 0.5 * _smooth_noise(rng, height, width, style.speckle_scale * 2.5)
    img += style.speckle * 0.35 * grains * (1.0 + 0.5 * np.tanh(grains))
    # Tissue texture at the scale of a few marks.
    if style.texture > 0:
        img += style.texture * 0.3 * _smooth_noise(rng, height, width, rng.uniform(6, 30))
    if style.fibres > 0:
        img += style.fibres * _fibres(rng, height, width)
    return img


def _fibres(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Thin curved streaks, the fibrous texture of some tissues."""
    layer = np.zeros((height, width), dtype=np.float32)
    n = int(height * width / 2500 * rng.uniform(0.5, 2.0))
    base_angle = rng.uniform(0, np.pi)
    for _ in range(n):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        angle = base_angle + rng.normal(0, 0.6)
        pts = []
        for _ in range(6):
            pts.append((x, y))
            angle += rng.normal(0, 0.3)
            step = rng.uniform(4, 14)
            x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        cv2.polylines(layer, [np.round(np.array(pts) * 4).astype(np.int32)], False, float(rng.uniform(0.3, 1.0)),
                      1, cv2.LINE_AA, shift=2)
    return cv2.GaussianBlur(layer, (0, 0), 0.8)


# -- marks -------------------------------------------------------------------------------------


def _draw_ids(
    lattice: Lattice, style: Style, width: int, height: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rasterise every present mark with its id; a mark never overwrites another's pixels.

    Returns the ids of whole marks, the pixels inside marks that are drawn as tissue (the gap of
    a split mark, see :data:`am.synth.shapes.PARTS`), and which nodes carry a mark.
    """
    ids = np.zeros((height, width), dtype=ID_DTYPE)
    gaps = np.zeros((height, width), dtype=bool)
    nodes = lattice.nodes()
    n = len(nodes)
    present = np.zeros(n, dtype=bool)
    keep = rng.random(n) >= style.missing
    pitch = min(lattice.pitch_x, lattice.pitch_y)
    shapes = list(SHAPES)
    for index in range(n):
        jitter = rng.normal(0.0, style.jitter * pitch, size=2)
        cx, cy = nodes[index] + jitter
        radius = style.mark_radius * float(np.clip(1 + rng.normal(0, style.size_jitter), 0.6, 1.4))
        name = shapes[rng.integers(len(shapes))] if style.mixed_shapes else style.shape
        angle = math.radians(style.mark_angle_deg + lattice.angle_deg + rng.normal(0, 6))
        if not keep[index]:
            continue
        reach = int(math.ceil(radius * 1.8)) + 1
        x0, x1 = max(0, int(cx) - reach), min(width, int(cx) + reach + 1)
        y0, y1 = max(0, int(cy) - reach), min(height, int(cy) + reach + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dx, dy = xx - cx, yy - cy  # pixel (i, j) has its centre at (i, j), as lattice nodes do
        u = dx * math.cos(angle) + dy * math.sin(angle)
        v = -dx * math.sin(angle) + dy * math.cos(angle)
        if name in PARTS:
            footprint, gap = PARTS[name](u, v, radius, rng)
        else:
            footprint, gap = SHAPES[name](u, v, radius, rng), None
        window = ids[y0:y1, x0:x1]
        footprint &= window == 0
        gap = footprint & gap if gap is not None else np.zeros_like(footprint)
        # Marks whose centre lies outside the image still count when part of them shows.
        if (footprint & ~gap).sum() < 4:
            continue
        window[footprint] = index + 1
        gaps[y0:y1, x0:x1] |= gap
        present[index] = True
    return ids, gaps, present


def _paint_marks(image: np.ndarray, ids: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Give marks their look: brighter, darker, dark with a bright rim, flat grey, a dark crater
    holding a light plateau, or a light floor ringed by a dark wall."""
    inside = (ids > 0).astype(np.float32)
    height, width = image.shape
    # Per-mark brightness variation via a lookup on the id image.
    gain = np.concatenate([[0.0], rng.uniform(0.8, 1.2, size=int(ids.max()))]).astype(np.float32)
    per_mark = gain[ids]
    local = cv2.GaussianBlur(image, (0, 0), max(3.0, style.pitch / 2))
    texture = 1.0 + style.mark_texture * _smooth_noise(rng, height, width, 1.0)
    soft = cv2.GaussianBlur(inside, (0, 0), MARK_EDGE_SIGMA)
    if style.polarity == "bright":
        value = local + style.contrast * per_mark * texture + 0.1
    elif style.polarity == "dark":
        value = _darkened(local, style, per_mark, texture)
    elif style.polarity == "grey":
        # Ablation wipes the tissue's texture away: a flat fill, lighter or darker than the surroundings.
        level = float(np.mean(image)) + rng.choice([-0.5, 1.0]) * style.contrast
        value = np.full_like(image, float(np.clip(level, 0.08, 0.92))) * per_mark * texture
    elif style.polarity == "flat":
        # Texture wiped away, a little lighter than the surroundings. The step has a floor and grows
        # with the speckle (whose std is about 0.35 * speckle): a smooth mark darker than grainy tissue
        # looks like the gaps between its grains, and a label nobody could draw from the image only
        # teaches the model to guess. Darker smooth marks are the "grey" polarity's job.
        value = _light_floor(local, style, per_mark, texture, rng)
        if rng.random() < 0.5:
            value = value + _one_sided_rim(inside, style, rng) * (style.contrast + 0.1)
    elif style.polarity == "crater":
        # A dark crater with a flat, light plateau on one side of its floor (crop2 of the real
        # samples): the part of the mark in shadow is as much the mark as the lit part.
        dark = _darkened(local, style, per_mark, texture)
        plateau = _one_sided_rim(inside, style, rng, reach=(0.4, 0.8))
        level = float(np.clip(np.mean(image) + rng.uniform(0.1, 0.3), 0.3, 0.9))
        value = dark * (1 - plateau) + level * per_mark * plateau
    elif style.polarity == "outlined":
        # A flat light floor ringed by the crater's dark wall (crop2 of the real samples, seen
        # closely): the wall is ablated too, so the mark reaches its outer edge, not the floor's.
        wall = _inner_band(ids, rng.uniform(*OUTLINE_WIDTH))
        if rng.random() < 0.5:  # the wall in shadow on one side, as the light falls
            wall = np.maximum(wall, _one_sided_rim(inside, style, rng))
        floor = _light_floor(local, style, per_mark, texture, rng)
        value = floor * (1 - wall) + _darkened(local, style, per_mark) * wall
    else:
        # A flat core with a bright rim on one side: the mark's raised edge catching the light.
        rim = _one_sided_rim(inside, style, rng)
        if rng.random() < 0.3:  # sometimes the whole edge shines
            rim_width = max(1, int(round(style.mark_radius * rng.uniform(0.15, 0.35))))
            eroded = cv2.erode(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim_width + 1,) * 2))
            rim = np.clip(inside - eroded, 0, 1)
        core = float(np.mean(image)) * rng.uniform(0.6, 1.05) * per_mark * texture
        value = core + rim * (style.contrast + 0.2)
    alpha = soft * rng.uniform(0.85, 1.0)
    out = image * (1 - alpha) + value * alpha
    if style.shadow > 0:
        # The crater's raised edge casts a dark crescent beside the mark (not part of the mark).
        out = out - style.shadow * cv2.GaussianBlur(_outer_shadow(inside, style, rng), (0, 0), 0.7)
    return out


def _darkened(local: np.ndarray, style: Style, per_mark: np.ndarray, texture: np.ndarray | float = 1.0) -> np.ndarray:
    """Tissue darkened by ``style.contrast`` per mark, less where the tissue is already dark (a dark
    mark on dark tissue must not fall below black)."""
    return local - style.contrast * per_mark * texture * np.clip(local + 0.2, 0.2, 1.0) - 0.05


def _light_floor(local: np.ndarray, style: Style, per_mark: np.ndarray, texture: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """A smooth floor a little lighter than the tissue, by a step that grows with the speckle
    (see the "flat" polarity in :func:`_paint_marks`)."""
    offset = rng.uniform(FLAT_MIN_OFFSET, 0.14) + 0.35 * style.speckle
    return local + offset * per_mark + style.mark_texture * 0.1 * (texture - 1)


def _inner_band(ids: np.ndarray, width: float) -> np.ndarray:
    """1 where a mark pixel lies within ``width`` px of the mark's edge (float32, soft by half a pixel).

    The image's border is not an edge: a mark the border cuts goes on beyond it, wall and all.
    """
    inside = (ids > 0).astype(np.uint8)
    padded = np.pad(inside, 1, constant_values=1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return (np.clip(width + 0.5 - distance, 0.0, 1.0) * inside).astype(np.float32)


def _outer_shadow(inside: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Pixels of a shifted, slightly grown copy of the marks that lie outside every mark."""
    height, width = inside.shape
    reach = max(1.0, style.mark_radius * rng.uniform(0.15, 0.35))
    angle = rng.uniform(0, 2 * np.pi)
    shift = np.float32([[1, 0, reach * math.cos(angle)], [0, 1, reach * math.sin(angle)]])
    grown = cv2.dilate(inside, np.ones((3, 3), np.uint8))
    moved = cv2.warpAffine(grown, shift, (width, height), flags=cv2.INTER_NEAREST)
    return np.clip(moved - inside, 0, 1)


def _one_sided_rim(inside: np.ndarray, style: Style, rng: np.random.Generator, *,
                   reach: tuple[float, float] = (0.15, 0.35)) -> np.ndarray:
    """The part of each mark that a copy shifted by ``reach`` radii does not cover: a rim on one side."""
    height, width = inside.shape
    rim_width = max(1, int(round(style.mark_radius * rng.uniform(*reach))))
    angle = rng.uniform(0, 2 * np.pi)
    shift = np.float32([[1, 0, rim_width * math.cos(angle)], [0, 1, rim_width * math.sin(angle)]])
    moved = cv2.warpAffine(inside, shift, (width, height), flags=cv2.INTER_NEAREST)
    return np.clip(inside - moved, 0, 1)


# -- distractors and optics ------------------------------------------------------------------


def _count(rate_per_mpx: float, height: int, width: int, rng: np.random.Generator) -> int:
    return int(rng.poisson(rate_per_mpx * height * width / 1e6)) if rate_per_mpx > 0 else 0


def _distractors(image: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Things that are not marks: out-of-focus bright blobs, dark holes, debris specks and scratches."""
    height, width = image.shape
    layer = np.zeros_like(image)
    for _ in range(_count(style.bright_blobs, height, width, rng)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        blob = np.zeros_like(image)
        for _ in range(int(rng.integers(1, 4))):  # lumpy: one to three overlapping ellipses
            axes = (int(rng.uniform(0.3, 1.3) * style.pitch), int(rng.uniform(0.3, 1.3) * style.pitch))
            centre = (int(cx + rng.normal(0, 0.5) * style.pitch), int(cy + rng.normal(0, 0.5) * style.pitch))
            cv2.ellipse(blob, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
        blob = cv2.GaussianBlur(blob, (0, 0), max(2.0, style.pitch * rng.uniform(0.1, 0.4)))
        layer += blob * rng.uniform(0.15, 0.6)
    for _ in range(_count(style.dark_holes, height, width, rng)):
        cx, cy = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        hole = np.zeros_like(image)
        cv2.circle(hole, (cx, cy), int(rng.uniform(2, max(3, style.pitch * 0.3))), 1.0, -1)
        layer -= cv2.GaussianBlur(hole, (0, 0), rng.uniform(0.5, 2.5)) * rng.uniform(0.15, 0.5)
    if style.dark_patches > 0:
        # Dark stretches of tissue a few marks wide, with soft, irregular edges.
        field = _smooth_noise(rng, height, width, style.pitch * rng.uniform(0.4, 1.2))
        layer -= style.dark_patches * np.clip(field - rng.uniform(0.3, 1.2), 0, 1)
    for _ in range(_count(style.debris, height, width, rng)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        value = rng.choice([-1, 1]) * rng.uniform(0.1, 0.45)
        if rng.random() < 0.3:
            length, angle = rng.uniform(5, 3 * style.pitch), rng.uniform(0, np.pi)
            end = (int(cx + length * math.cos(angle)), int(cy + length * math.sin(angle)))
            cv2.line(layer, (int(cx), int(cy)), end, value, int(rng.integers(1, 3)), cv2.LINE_AA)
        else:
            pts = np.array([[cx, cy]]) + rng.normal(0, rng.uniform(1, 5), size=(5, 2))
            cv2.fillPoly(layer, [cv2.convexHull(pts.astype(np.int32))], value)
    return image + layer


def _optics(image: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape
    if style.illumination > 0:
        field = _smooth_noise(rng, height, width, max(height, width) / rng.uniform(2, 6))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        gx, gy = rng.normal(0, 1, size=2)
        ramp = (gx * (xx / max(width, 1) - 0.5) + gy * (yy / max(height, 1) - 0.5)).astype(np.float32)
        image = image * (1.0 + style.illumination * (0.5 * field + ramp)).astype(np.float32)
    if style.blur > OPTICS_MIN_BLUR:
        image = cv2.GaussianBlur(image, (0, 0), style.blur)
    if style.noise > 0:
        image = image + rng.normal(0, style.noise, size=image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)
