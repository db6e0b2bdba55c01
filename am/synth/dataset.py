"""Write synthetic data to disk: full dataset layouts (with ground truth) and training tiles.

A dataset follows the dataset layout of the README (``DIR/source/<group>/image.tif``), plus ground truth the pipeline
never reads under ``DIR/truth/<group>/``: ``mask.png`` (0/255), ``ids.png`` (uint16, id =
row*cols+col+1) and ``lattice.json``. Training tiles follow the original training layout
``DIR/<split>/synthetic/<group>/{source,mask}/NNNN.png``, normalised as the pipeline normalises::

    write_dataset(Path("data/inference/dataset"), rows=50, cols=50, seed=7)
    write_tiles(Path("data/training"), count=200, size=512, seed=1, split="valid")
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from am.dataset_lock import dataset_lock
from am.errors import InputError
from am.files import check_can_replace, staging, swap_in
from am.imageio import write_png, write_tiff
from am.normalize import normalize
from am.synth.lattice import Lattice
from am.synth.render import Scene, Style, random_style, render, to_bit_depth

log = logging.getLogger(__name__)

DEMO_PITCH_RANGE = (30.0, 45.0)
# ids.png is 16-bit: a grid may hold at most this many marks (id 0 is background).
MAX_MARKS = int(np.iinfo(np.uint16).max)
# Largest image a dataset group may have, in pixels.
MAX_PIXELS = 400e6
# The largest side of a synthetic training or evaluation image (am.synth tiles, am.evaluate
# --synthetic, am.train --synthetic-size): each is rendered and held whole, with float layers of its
# size, so 65536 px would ask for tens of GB and end in a MemoryError; crops and tiles see at most
# 4096 px of one anyway, and more images, not larger ones, give more to learn from or score.
MAX_SYNTHETIC_SIZE = 4096


def synthetic_size_problem(option: str, size: int) -> str | None:
    """Why ``size`` given as ``option`` is too large a synthetic image, or None."""
    if size <= MAX_SYNTHETIC_SIZE:
        return None
    return (f"{option} {size} is above {MAX_SYNTHETIC_SIZE}: each synthetic image is rendered and held in memory "
            f"whole; give {MAX_SYNTHETIC_SIZE} or less (more images, not larger ones, give more to work on)")


# Hidden folder inside a dataset or training root where output is built before it is swapped in.
STAGING_NAME = ".synth.partial"


@dataclass(frozen=True)
class Sample:
    """One normalised training image with its mask."""

    image: np.ndarray  # uint8 (H, W)
    mask: np.ndarray  # uint8 (H, W) 0/255
    style: Style


def demo_style(rng: np.random.Generator, *, pitch: float | None = None) -> Style:
    """A clean, realistic look for the sample dataset: bright crescents on speckled tissue."""
    pitch = float(rng.uniform(*DEMO_PITCH_RANGE)) if pitch is None else float(pitch)
    return Style(
        pitch=pitch,
        pitch_ratio=1.0,
        angle_deg=float(rng.uniform(-4, 4)),
        shear=0.0,
        mark_radius=pitch * 0.36,
        shape="crescent",
        mark_angle_deg=180.0 + float(rng.uniform(-20, 20)),
        polarity="bright",
        contrast=0.35,
        mark_texture=0.08,
        jitter=0.02,
        size_jitter=0.06,
        missing=0.01,
        background=0.25,
        speckle=0.3,
        speckle_scale=1.2,
        texture=0.12,
        illumination=0.2,
        blur=0.7,
        noise=0.02,
        bright_blobs=0.5,
        dark_holes=5.0,
        debris=5.0,
    )


# With uneven rows, the closest rows' marks are at least this many mark radii apart (centre to centre).
UNEVEN_ROW_CLEARANCE = 2.6


def dataset_layout(
    *,
    rows: int,
    cols: int,
    seed: int,
    style: Style,
    margin: float | None = None,
    uneven_rows: bool = False,
) -> tuple[Lattice, int, int]:
    """The lattice and image size of a whole acquisition of ``rows`` x ``cols`` marks with a margin
    of tissue around it, without drawing anything.

    Cheap, so that every group of a dataset can be checked before the first is rendered; raises
    InputError for a grid whose ids do not fit ``ids.png`` or whose image is too large to make.
    The image holds every node of the lattice, sheared or not, with ``margin`` around them.
    ``uneven_rows`` spaces the rows unevenly and slides each along itself, as the real ``tile_b``
    shows (:meth:`Lattice.with_uneven_rows`); the image grows to hold them. Those draws come from a
    stream of their own, so the rest of the scene is that of the same seed.
    """
    if rows < 1 or cols < 1:
        raise InputError(f"rows and cols must be >= 1, got {rows} x {cols}")
    if rows * cols > MAX_MARKS:
        raise InputError(f"a {rows} x {cols} grid has {rows * cols} marks, but ids.png holds at most {MAX_MARKS} "
                         "(16-bit ids); ask for fewer rows or columns")
    check_pitch(style.pitch)
    pitch_x, pitch_y = style.pitch, style.pitch * style.pitch_ratio
    margin = 2.0 * max(pitch_x, pitch_y) if margin is None else float(margin)
    theta = math.radians(abs(style.angle_deg))
    span_x, span_y = (cols - 1) * pitch_x, (rows - 1) * pitch_y
    width = int(math.ceil(span_x * math.cos(theta) + span_y * math.sin(theta) + 2 * margin))
    height = int(math.ceil(span_x * math.sin(theta) + span_y * math.cos(theta) + 2 * margin))
    lattice = Lattice.centred(rows=rows, cols=cols, width=width, height=height, pitch_x=pitch_x, pitch_y=pitch_y,
                              angle_deg=style.angle_deg, shear=style.shear)
    # A sheared lattice reaches further than its rotated rectangle: the image grows to hold every node
    # with the margin around it (an image the rectangle's size already holds is left as it was).
    nodes = lattice.nodes()
    need_w, need_h = (int(v) for v in np.ceil(nodes.max(axis=0) - nodes.min(axis=0) + 2 * margin))
    if need_w > width or need_h > height:
        width, height = max(width, need_w), max(height, need_h)
        lattice = Lattice.centred(rows=rows, cols=cols, width=width, height=height, pitch_x=pitch_x,
                                  pitch_y=pitch_y, angle_deg=style.angle_deg, shear=style.shear)
    if uneven_rows:
        # Rows as close as real ones (0.65 of the usual gap) but, as there, with tissue between
        # the marks of neighbouring rows: the usual gap grows where the marks are large.
        lattice = replace(lattice, pitch_y=max(lattice.pitch_y, UNEVEN_ROW_CLEARANCE * style.mark_radius / 0.65))
        lattice = lattice.with_uneven_rows(np.random.default_rng([seed, 2]), spacing=(0.65, 1.3))
        nodes = lattice.nodes()
        low, high = nodes.min(axis=0), nodes.max(axis=0)
        width, height = (int(v) for v in np.ceil(high - low + 2 * margin))
        lattice = replace(lattice, origin_x=lattice.origin_x + margin - float(low[0]),
                          origin_y=lattice.origin_y + margin - float(low[1]))
    if width * height > MAX_PIXELS:
        raise InputError(f"a {rows} x {cols} grid at pitch {pitch_x:.0f} px makes a {width} x {height} image; "
                         "that is too large to generate here")
    return lattice, width, height


def is_pitch(value: float) -> bool:
    """Whether ``value`` is a usable grid pitch: a finite number of pixels above 0."""
    return math.isfinite(value) and value > 0


# The smallest --pitch whose marks all show: on 4 x 4 grids of 6 seeds, 8 px left out as many marks
# as 30 px (those left out on purpose), 5 px 2-9 of 16, 4 px 13-15.
MIN_VISIBLE_PITCH = 8.0


def pitch_range_problem(low: float, high: float) -> str | None:
    """Why ``--pitch-min low`` / ``--pitch-max high`` cannot bound the generator's pitch, or None: every
    command that draws synthetic images (am.synth, am.train, am.evaluate, am.train.mine) asks this."""
    if not (is_pitch(low) and is_pitch(high) and low <= high):
        return f"--pitch-min {low} and --pitch-max {high} must be finite numbers of pixels > 0 with min <= max"
    return too_small_pitch("--pitch-min", low)


def too_small_pitch(option: str, pitch: float) -> str | None:
    """Why ``pitch`` given as ``option`` draws marks too small to show, or None.

    Marks are drawn a fraction of the pitch across: below :data:`MIN_VISIBLE_PITCH` some or all
    vanish, and the image would hold a mask without (all) its marks.
    """
    if pitch >= MIN_VISIBLE_PITCH:
        return None
    return (f"{option} {pitch:g} px draws marks too small to show (some vanish below {MIN_VISIBLE_PITCH:g} px); "
            f"give {MIN_VISIBLE_PITCH:g} px or more")


def check_pitch(pitch: float) -> None:
    """Raise InputError unless ``pitch`` is a usable grid pitch (:func:`is_pitch`)."""
    if not is_pitch(pitch):
        raise InputError(f"pitch must be a number of pixels > 0, got {pitch}")


def write_dataset(
    root: Path,
    *,
    rows: int,
    cols: int,
    seed: int = 0,
    groups: int = 1,
    bit_depth: int = 8,
    pitch: float | None = None,
    realistic: bool = True,
    uneven_rows: bool = False,
    force: bool = False,
    progress: Callable[[Iterable[_GroupPlan]], Iterable[_GroupPlan]] | None = None,
) -> list[Path]:
    """Write ``groups`` synthetic acquisitions to ``root``; returns the source image paths.

    ``uneven_rows`` draws rows unevenly spaced and slid along themselves (see :func:`dataset_layout`).
    ``progress`` may wrap the groups as they are drawn (the CLI passes tqdm: a group takes seconds).

    Refuses to write into an existing dataset (a ``source`` or ``truth`` folder) unless ``force``.
    Every group is checked before the first is drawn, and the dataset is built in a staging
    folder that replaces ``source`` and ``truth`` only once complete: a run that fails leaves the
    previous dataset as it was, and a forced one leaves no stale group behind.
    """
    root = Path(root)
    if bit_depth not in (8, 16):
        raise InputError(f"--bit-depth must be 8 or 16, got {bit_depth}")
    if groups < 1:
        raise InputError(f"--groups must be >= 1, got {groups}")
    if pitch is not None:
        check_pitch(pitch)
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file; give a folder for the dataset")
    for sub in ("source", "truth"):
        # --force would move the file into staging and delete it, then fail with a misleading error.
        if (root / sub).exists() and not (root / sub).is_dir():
            raise InputError(f"{root / sub} is a file, not a folder; move it aside and rerun")
    existing = [sub for sub in ("source", "truth") if (root / sub).exists()]
    if existing and not force:
        raise InputError(f"{root} already holds a dataset ({' and '.join(f'{sub}/' for sub in existing)} "
                         "exist); pass --force to replace it")
    plans = [_plan_group(index, rows=rows, cols=cols, seed=seed, pitch=pitch, realistic=realistic,
                         uneven_rows=uneven_rows) for index in range(groups)]
    root.mkdir(parents=True, exist_ok=True)
    # A pipeline, am.register or another forced draw working on this dataset meanwhile would see its
    # source images and truth replaced under it: the dataset's lock keeps them apart.
    with dataset_lock(root, command="am.synth dataset"), staging(root / STAGING_NAME) as stage:
        for plan in plans if progress is None else progress(plans):
            scene = render(plan.lattice, plan.style, width=plan.width, height=plan.height,
                           rng=np.random.default_rng(plan.seed))
            source = stage / "source" / plan.group / "image.tif"
            source.parent.mkdir(parents=True, exist_ok=True)
            write_tiff(source, to_bit_depth(scene.image, bit_depth))
            truth = stage / "truth" / plan.group
            truth.mkdir(parents=True, exist_ok=True)
            write_png(truth / "mask.png", scene.mask)
            write_png(truth / "ids.png", ids_png(scene.ids, truth / "ids.png"))
            (truth / "lattice.json").write_text(json.dumps(_truth_record(scene, plan.style, seed=plan.seed),
                                                           indent=1))
            log.info("drew %s: %d x %d px, %d of %d marks, pitch %.1f px", plan.group, scene.image.shape[1],
                     scene.image.shape[0], int(scene.present.sum()), rows * cols, plan.style.pitch)
        for sub in ("source", "truth"):
            swap_in(stage / sub, root / sub)
    return [root / "source" / plan.group / "image.tif" for plan in plans]


def ids_png(ids: np.ndarray, path: Path) -> np.ndarray:
    """A scene's ids (int32, see :data:`am.synth.render.ID_DTYPE`) as the 16-bit ``ids.png`` stores them.

    The layout's ids.png stays uint16, which every reader of a dataset's truth expects; the grid's
    size check (:data:`MAX_MARKS`) keeps every id within it, and this says so rather than wrap one.
    """
    top = int(ids.max()) if ids.size else 0
    if top > MAX_MARKS:
        raise InputError(f"cannot write {path}: mark id {top} does not fit a 16-bit PNG (at most {MAX_MARKS}); "
                         "draw a grid of fewer rows x cols")
    return ids.astype(np.uint16)


@dataclass(frozen=True)
class _GroupPlan:
    group: str
    seed: int
    style: Style
    lattice: Lattice
    width: int
    height: int


def _plan_group(index: int, *, rows: int, cols: int, seed: int, pitch: float | None, realistic: bool,
                uneven_rows: bool) -> _GroupPlan:
    """Style and layout of group ``index``: the same draws as rendering it, so a bad size fails before any work."""
    group_seed = seed * 1000 + index
    rng = np.random.default_rng([group_seed, 1])
    style = demo_style(rng, pitch=pitch) if realistic else random_style(rng)
    if pitch is not None:
        style = replace(style, pitch=float(pitch), mark_radius=float(pitch) * style.mark_radius / style.pitch)
    lattice, width, height = dataset_layout(rows=rows, cols=cols, seed=group_seed, style=style,
                                            uneven_rows=uneven_rows)
    return _GroupPlan(f"group{index + 1:02d}", group_seed, style, lattice, width, height)


def _truth_record(scene: Scene, style: Style, *, seed: int) -> dict:
    lat = scene.lattice
    return {
        "rows": lat.rows,
        "cols": lat.cols,
        "pitch_x": lat.pitch_x,
        "pitch_y": lat.pitch_y,
        "angle_deg": lat.angle_deg,
        "origin_x": lat.origin_x,
        "origin_y": lat.origin_y,
        "shear": lat.shear,
        "row_across_px": list(lat.row_across),
        "row_along_px": list(lat.row_along),
        "width": int(scene.image.shape[1]),
        "height": int(scene.image.shape[0]),
        "missing_ids": [int(i) for i in lat.ids()[~scene.present]],
        "seed": seed,
        "style": asdict(style),
    }


def random_sample(
    rng: np.random.Generator,
    *,
    size: int,
    pitch_range: tuple[float, float] = (20.0, 85.0),
    labels: str = "visible",
    blob_rate: float = 1.0,
    polarity_mix: Mapping[str, float] | None = None,
) -> Sample:
    """One training image of ``size`` x ``size``: a random style, a lattice overfilling the frame, normalised.

    ``labels`` is the truth convention of :data:`am.synth.truth.LABELS`; the image does not depend on it.
    ``blob_rate`` multiplies the out-of-focus bright blobs and ``polarity_mix`` weighs the mark
    polarities (see :func:`am.synth.render.random_style`).
    """
    style = random_style(rng, pitch_range=pitch_range, blob_rate=blob_rate, polarity_mix=polarity_mix)
    pitch_x, pitch_y = style.pitch, style.pitch * style.pitch_ratio
    n = int(math.ceil(size * 1.6 / min(pitch_x, pitch_y))) + 3
    # Sometimes the acquisition's edge falls inside the frame, as at a tile on the border.
    offset = rng.uniform(-0.5, 0.5, size=2) * pitch_x
    if rng.random() < 0.25:
        offset += rng.choice([-1, 1], size=2) * rng.uniform(0.3, 0.8, size=2) * size * 1.6 / 2
    lattice = Lattice.centred(rows=n, cols=n, width=size, height=size, pitch_x=pitch_x, pitch_y=pitch_y,
                              angle_deg=style.angle_deg, shear=style.shear,
                              offset_x=float(offset[0]), offset_y=float(offset[1]))
    scene = render(lattice, style, width=size, height=size, rng=rng, labels=labels)
    image = normalize(to_bit_depth(scene.image, 16), low_pct=1.0, high_pct=99.0, name="synthetic sample")
    return Sample(image=image, mask=scene.mask, style=style)


def iter_samples(seed: int, count: int, *, size: int, pitch_range: tuple[float, float] = (20.0, 85.0),
                 labels: str = "visible", blob_rate: float = 1.0,
                 polarity_mix: Mapping[str, float] | None = None, workers: int = 0) -> Iterator[Sample]:
    """``count`` reproducible samples: sample ``i`` depends only on ``(seed, i)``.

    ``workers`` > 1 renders on that many processes (a GPU machine's training run would otherwise
    wait minutes on one core for thousands of images); the samples and their order are the same.
    """
    render_one = partial(sample_at, seed, size=size, pitch_range=pitch_range, labels=labels,
                         blob_rate=blob_rate, polarity_mix=dict(polarity_mix) if polarity_mix else None)
    if workers <= 1 or count < 2:
        yield from map(render_one, range(count))
        return
    # spawn: the caller may hold threads (torch) that a forked child must not inherit.
    with ProcessPoolExecutor(max_workers=min(workers, count), mp_context=get_context("spawn")) as pool:
        yield from pool.map(render_one, range(count), chunksize=max(1, min(16, count // (4 * workers))))


def sample_at(seed: int, index: int, **options: Any) -> Sample:
    """Sample ``index`` of the series ``seed`` (``options`` as for :func:`random_sample`), rendered alone."""
    return random_sample(np.random.default_rng([seed, index]), **options)


def group_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name the one folder a group's tiles go into, or None: an empty name fell
    back to the default group and a path-like one wrote somewhere else, each silently."""
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        return f"group {name!r} must be a plain folder name: not empty or blank, no '/' or '\\', not . or .."
    return None


def write_tiles(
    root: Path,
    *,
    count: int,
    size: int = 512,
    seed: int = 0,
    split: str = "train",
    group: str | None = None,
    pitch_range: tuple[float, float] = (20.0, 85.0),
    progress: Callable[[Iterator[Sample]], Iterable[Sample]] | None = None,
    labels: str = "visible",
    force: bool = False,
) -> Path:
    """Write ``count`` samples as ``root/<split>/synthetic/<group>/{source,mask}/NNNN.png``.

    Returns the group folder. ``progress`` may wrap the sample iterator (the CLI passes tqdm).
    A group folder that already holds files is refused unless ``force``, which replaces it: the
    training reader takes every file it finds, so an earlier run's extra tiles must not survive.
    The group is built in a staging folder and swapped in complete, so a failed run changes nothing.
    """
    if split not in ("train", "valid"):
        raise InputError(f"split must be 'train' or 'valid', got {split!r}")
    if count < 1 or size < 32 or size % 32:
        raise InputError(f"count must be >= 1 and size a multiple of 32 (>= 32), got count={count}, size={size}")
    if problem := synthetic_size_problem("size", size):
        raise InputError(problem)
    low, high = pitch_range
    check_pitch(low)
    check_pitch(high)
    if low > high:
        raise InputError(f"the smallest pitch {low} must not exceed the largest {high}")
    name = f"seed{seed}" if group is None else group  # an empty name is refused, not taken as the default
    if problem := group_name_problem(name):
        raise InputError(problem)
    root = Path(root)
    folder = root / split / "synthetic" / name
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; remove it or choose another --group")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise InputError(f"{folder} already holds tiles; pass --force to replace them or choose another --group")
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file; give a folder for the training data")
    # A file on the way (root/train a file, say) or a read-only folder fails here, naming it, not
    # after every tile was rendered.
    check_can_replace([folder])
    samples: Iterable[Sample] = iter_samples(seed, count, size=size, pitch_range=pitch_range, labels=labels)
    if progress is not None:
        samples = progress(samples)
    # One staging folder per group, so runs writing other groups of the same root at once do not meet.
    empty = 0
    with staging(root / f"{STAGING_NAME}-{split}-{name}") as stage:
        for index, sample in enumerate(samples):
            write_png(stage / name / "source" / f"{index:04d}.png", sample.image)
            write_png(stage / name / "mask" / f"{index:04d}.png", sample.mask)
            empty += not sample.mask.any()
        swap_in(stage / name, folder)
    if empty:
        # The generator's own ranges never leave a tile without a mark; a pitch near the tile's side
        # does, and a model trained on many such tiles learns to find nothing.
        log.warning("%d of %d tiles in %s hold no mark (their masks are empty): with pitches up to %g px on %d px "
                    "tiles a lattice may miss a tile; give a --pitch-max well under --size, or a larger --size",
                    empty, count, folder, high, size)
    return folder
