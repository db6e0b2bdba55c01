"""Preparation stage: normalise a group's image, plan its tiles and write them to the dataset.

Work already done is reused: ``tiles/<group>/meta.json`` records what the tiles and their masks
were made from (source file, normalisation, scale, tile geometry, model, test-time augmentation,
the workers' own mask settings: post-processing, precision, compilation, and the release's way of
making them, :data:`MASK_RECIPE`). When all of that is unchanged
the tiles are kept and only tiles without a mask are sent out again, so a rerun after a
failure or Ctrl-C redoes only what is missing. The source file counts as unchanged when its
name, size and modification time match, or, when only the time differs (a dataset copied with
``cp -r``, a file touched), when its SHA-256 matches the one recorded; plans written before the
hash was recorded have only the time to go by::

    prepared = prepare_group(layout, "g1", settings=settings, model_id=model_id)
    prepared.pending   # tile indices that still need a mask

The pipeline does the same in steps, so that segmentation starts while tiles are still being
cut: :func:`reuse_group` decides from meta.json alone (no pixel is read) whether a group needs
cutting, and :class:`GroupTiler` cuts it one row of tiles at a time. meta.json is written as
soon as the tiles are planned, marked incomplete until the last tile is on disk, so a run stopped
while it was still cutting keeps its masks too: the next one cuts again and sends only the tiles
that have none::

    prepared = reuse_group(layout, "g1", settings=settings, model_id=model_id)
    if prepared is None:
        tiler = GroupTiler(layout, "g1", settings=settings, model_id=model_id)
        tiler.normalise()
        for chunk in tiler.chunks():
            send(chunk.group, chunk.tiles)      # (index, uint8 array) pairs, already on disk
        prepared = tiler.finish()
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from am.cli import COMPILE_MODES, POSTPROCESS_MODES, PRECISIONS
from am.dataset import DatasetLayout
from am.errors import ConfigError, InputError
from am.files import clear_output, file_sha256, write_atomic
from am.imageio import MAX_PIXELS, check_complete, encode_png, header_size, read_header, read_image, write_tiff
from am.interrupts import ThreadPool, result_of
from am.normalize import check_finite, check_not_blank, normalize, to_grey
from am.pitch import choose_scale, resolve_scale
from am.settings import AUTO_SCALE, Settings
from am.tiling import TilePlan, plan_tiles, read_tile

log = logging.getLogger(__name__)

META_VERSION = 1
# How this release makes tiles and masks from the same image, model and settings. A plan made by a
# release that made them otherwise (or made before this was recorded) is segmented again rather than
# its masks reused: raise it with any change that alters them.
MASK_RECIPE = 2
# The shortest side an image may have at the model's scale: the U-Net halves its input five times
# (the checkpoints' stride, 32), so a thinner image leaves its deepest layer less than one pixel of
# content; a tile of it is almost all reflected padding, and the model marks stripes, not marks.
MIN_IMAGE_SIDE_PX = 32
# Settings the workers read from their environment that change the masks they return: name in the
# plan, variable, the workers' default and the values allowed. A change must make the masks again,
# as a change of model does. Local workers inherit the orchestrator's environment; ECS tasks never
# see it (they keep their task definition's values, which the stack leaves at the defaults).
WORKER_MASK_SETTINGS = {
    "postprocess": ("AM_POSTPROCESS", "on", POSTPROCESS_MODES),
    "precision": ("AM_PRECISION", "auto", PRECISIONS),
    "compile": ("AM_COMPILE", "auto", COMPILE_MODES),
}
DEFAULT_WORKER_MASK_SETTINGS = {name: default for name, (_, default, _) in WORKER_MASK_SETTINGS.items()}


@dataclass(frozen=True)
class PreparedGroup:
    """A group ready for segmentation: its plan, the scale it was tiled at, and what is left to do."""

    group: str
    plan: TilePlan
    source_height: int
    source_width: int
    scale: float
    pending: tuple[int, ...]

    @property
    def n_tiles(self) -> int:
        return len(self.plan.tiles)


@dataclass(frozen=True)
class TileChunk:
    """Tiles just written to the dataset, with their pixels, so uploading them reads no file back."""

    group: str
    tiles: tuple[tuple[int, np.ndarray], ...]


def _file_stat(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _same_source(path: Path, recorded: Any) -> dict[str, Any] | None:
    """The identity to record for ``path`` when it is the file ``recorded`` describes, else None.

    Same name, size and modification time: the same file, nothing is read. Same name and size
    but another time: the same file only when its contents hash to the recorded SHA-256, and the
    identity returned carries the new time, so the next check takes the fast path again. A plan
    without a hash (written by an older version) matches on the time alone, as it always did.
    """
    current = _file_stat(path)
    if not _may_be_recorded(current, recorded):
        return None
    if recorded.get("mtime_ns") == current["mtime_ns"]:
        return recorded
    sha256 = recorded.get("sha256")
    if not isinstance(sha256, str) or file_sha256(path) != sha256:
        return None
    return {**current, "sha256": sha256}


def _may_be_recorded(current: dict[str, Any], recorded: Any) -> bool:
    """Whether the file of stat ``current`` may be the one ``recorded`` describes: the same name and
    size. Cheap, unlike the hash :func:`_same_source` then needs where the modification time differs."""
    return isinstance(recorded, dict) and all(recorded.get(k) == current[k] for k in ("name", "size"))


def worker_mask_settings(environ: Mapping[str, str], *, backend: str) -> dict[str, str]:
    """The workers' settings that change masks, as this run's workers will read them.

    Local workers inherit ``environ``, so ``AM_POSTPROCESS=off python -m am.pipeline ...`` makes
    thresholded masks; recorded in meta.json, the setting decides reuse like the model does. A
    bad value is refused here, before any worker starts and fails on it, and so is a bad value of
    any other variable they inherit (AM_MAX_BATCH_S, ...) and a precision this machine's device
    cannot run (AM_PRECISION=fp16 without CUDA). ECS tasks do not see this environment: the
    defaults are what they run with, on the GPU machines they are given.
    """
    if backend != "local":
        return dict(DEFAULT_WORKER_MASK_SETTINGS)
    resolved = {}
    for name, (variable, default, allowed) in WORKER_MASK_SETTINGS.items():
        value = environ.get(variable, "").strip().lower() or default
        if value not in allowed:
            raise ConfigError(f"{variable} = {value!r} must be one of {', '.join(allowed)} (the local workers read it)")
        resolved[name] = value
    from am.backends import check_local_worker_environment  # the backend knows what it gives workers itself

    check_local_worker_environment(environ)
    return resolved


def _settings_identity(settings: Settings, model_id: str, worker: Mapping[str, str] | None) -> dict[str, Any]:
    """What the tiles and masks were made with, apart from the source file."""
    return {
        "norm_pct": [settings.norm_low_pct, settings.norm_high_pct],
        "scale": settings.scale,
        "tile_size": settings.tile_size,
        "tile_overlap": settings.tile_overlap,
        "model": model_id,
        "tta": settings.tta,
        "worker": dict(worker if worker is not None else DEFAULT_WORKER_MASK_SETTINGS),
        "recipe": MASK_RECIPE,
    }


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


def _read_meta(path: Path, *, quiet: bool = False) -> dict[str, Any] | None:
    """The plan in ``path``, or None; ``quiet`` when the caller knows it was read (and any damage reported) before."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.log(logging.DEBUG if quiet else logging.WARNING,
                "ignoring unreadable tile plan %s (%s); tiles will be made again", path, exc)
        return None
    if not (isinstance(data, dict) and data.get("version") == META_VERSION):
        return None
    if damage := _meta_damage(data):
        # JSON that parses but holds no usable plan (a hand edit, a disk fault) is as unreadable.
        log.log(logging.DEBUG if quiet else logging.WARNING,
                "ignoring damaged tile plan %s (%s); tiles will be made again", path, damage)
        return None
    return data


def _meta_damage(meta: dict[str, Any]) -> str | None:
    """What keeps a plan of this version from being used as written, or None: every reader after
    :func:`_read_meta` takes its keys as :meth:`GroupTiler._write_meta` writes them."""
    if not isinstance(meta.get("identity"), dict):
        return "no settings recorded"
    for key in ("source_height", "source_width"):
        if not (isinstance(meta.get(key), int) and meta[key] > 0):
            return f"{key} {meta.get(key)!r} is not a size in pixels"
    try:
        TilePlan.from_json(json.dumps(meta.get("plan")))
    except InputError as exc:
        return str(exc).removesuffix("; plan the tiles again")
    return None


def _is_complete(meta: dict[str, Any]) -> bool:
    """Whether a plan's tiles were all cut; plans written before the flag existed were written complete."""
    return bool(meta.get("complete", True))


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) after :func:`rescale`."""
    if scale == 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def tile_valid_extent(plan: TilePlan) -> tuple[int, int] | None:
    """The rows and columns of every tile of ``plan`` that are image, or None where tiles are all image.

    Only an image smaller than a tile is padded (reflected), and it then has a single row or column
    of tiles, so one extent holds for all of them. The mask must be made of that part alone: in the
    padding, a mark cut by the image edge meets its mirror image inside the tile and is no longer
    seen at an edge, where post-processing keeps the visible parts of cut marks.
    """
    rows, cols = min(plan.height, plan.tile_size), min(plan.width, plan.tile_size)
    return None if (rows, cols) == (plan.tile_size, plan.tile_size) else (rows, cols)


def rescale(image: np.ndarray, *, scale: float) -> np.ndarray:
    """Resize so the marks match the scale the model was trained at (scale 0.5 halves the image)."""
    if scale == 1.0:
        return image
    height, width = scaled_size(image.shape[0], image.shape[1], scale)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def check_image_size(height: int, width: int, *, scale: float, name: str, advice: str | None = None) -> None:
    """Refuse an image too thin for the model (:data:`MIN_IMAGE_SIDE_PX` at the model's scale), or one that the
    scale would make larger than :data:`~am.imageio.MAX_PIXELS` (resized in one piece, it would cost that
    memory at once: 40 GB at --scale 10 on a 20000 px image), naming its size.

    ``name`` is what the message calls the image (``image PATH``, ``the record``); ``advice`` replaces
    the command-line advice for callers whose users have no --scale and no groups (an HTTP client).
    """
    scaled_height, scaled_width = scaled_size(height, width, scale)
    if scaled_height * scaled_width > MAX_PIXELS >= height * width:
        # Resized, the image would break the memory bound its reading keeps (imageio's MAX_PIXELS, whose
        # reader refuses a larger image as it stands).
        largest = math.floor(math.sqrt(MAX_PIXELS / (height * width)) * 100) / 100
        raise InputError(
            f"{name} is {height} x {width} px (height x width); at --scale {scale:g} it would be {scaled_height} x "
            f"{scaled_width} px, more than the {MAX_PIXELS} px (40000 x 40000) an image may have: give --scale "
            f"{largest:g} or less, or split the acquisition into several images"
        )
    if min(scaled_height, scaled_width) >= MIN_IMAGE_SIDE_PX:
        return
    at_scale = "" if scale == 1.0 else f", {scaled_height} x {scaled_width} px at --scale {scale:g}"
    larger_scale = "" if scale >= 1.0 else ", or a larger --scale"
    advice = advice or f"use a larger crop of the acquisition{larger_scale}, or leave the group out"
    raise InputError(
        f"{name} is {height} x {width} px (height x width{at_scale}); the model needs at least "
        f"{MIN_IMAGE_SIDE_PX} px on each side, or its masks are made of padding: {advice}"
    )


def nominal_scale(settings: Settings) -> float:
    """The factor known before an image is read: ``scale``, or 1 for ``auto``, whose factor comes from the pixels.

    Where it serves (the size checks and the tile count made from headers) 1 is safe: ``auto`` only
    ever resizes an image whose lattice it can see, which takes a window at least four pitches wide,
    so the factor it picks leaves the image about 180 px (four target pitches) or more on each side.
    """
    return nominal_factor(settings.scale)


def nominal_factor(scale: float | str) -> float:
    """:func:`nominal_scale` of a scale setting itself (a factor, or ``auto``), for callers without Settings."""
    return 1.0 if scale == AUTO_SCALE else float(scale)


def _recorded_scale(meta: dict[str, Any], settings: Settings) -> float | None:
    """The factor a plan's tiles were cut at; plans from before it was recorded were cut at the setting."""
    recorded = meta.get("scale")
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        return float(recorded)
    return None if settings.scale == AUTO_SCALE else nominal_scale(settings)


def check_group_size(layout: DatasetLayout, group: str, *, settings: Settings) -> None:
    """:func:`check_image_size` from the image's header (refusing a damaged header)."""
    path = layout.source_image(group)
    header = read_header(path)
    check_image_size(header.height, header.width, scale=nominal_scale(settings), name=f"image {path}")


def check_group_image(layout: DatasetLayout, group: str, *, settings: Settings) -> None:
    """:func:`check_group_size` and :func:`check_complete`, before anything starts: an image too small,
    damaged in its header, cut short or (a PNG) damaged anywhere is refused before any worker starts."""
    check_group_size(layout, group, settings=settings)
    check_complete(layout.source_image(group))


def check_group_pixels(layout: DatasetLayout, group: str) -> None:
    """Refuse a group's image with NaN or infinite pixels, or a blank one
    (:func:`~am.normalize.check_not_blank`), before any worker starts rather than after every tile was
    segmented for an empty mask.

    Only for a group that is to be cut: it decodes the whole image once more (0.06 s for 2000 x 2000 px of
    8-bit, 0.5 s for 8000 x 8000 px of zlib 16-bit), which a rerun reusing its tiles need not pay.
    """
    path = layout.source_image(group)
    name = f"image {path}"
    grey = to_grey(read_image(path), name=name)
    check_finite(grey, name)
    check_not_blank(grey, name)


def planned_tiles(layout: DatasetLayout, group: str, *, settings: Settings) -> int | None:
    """How many tiles the group's image will be cut into, from its file header; None when unknown.

    Lets the job start no more workers than there will be tiles before a pixel is read. With
    ``scale: auto`` it counts the tiles at scale 1: an estimate, since the factor comes from the pixels.
    """
    size = header_size(layout.source_image(group))
    if size is None or min(size) < 1:
        return None
    height, width = scaled_size(size[0], size[1], nominal_scale(settings))
    return len(plan_tiles(height, width, tile_size=settings.tile_size, overlap=settings.tile_overlap))


def _settings_changes(meta: dict[str, Any], settings: Settings, model_id: str,
                      worker: Mapping[str, str] | None) -> list[str]:
    """What differs between the settings a plan was made with and these ("scale 1.0 -> auto"); empty: none."""
    identity = meta.get("identity")
    if not isinstance(identity, dict):
        return ["the plan records no settings"]
    recorded = {k: v for k, v in identity.items() if k != "source"}
    current = _settings_identity(settings, model_id, worker)
    changes = []
    for key in sorted(set(recorded) | set(current)):
        before, now = recorded.get(key), current.get(key)
        if before != now:
            if key == "model":  # ids are long hashes: enough of them to tell two apart
                before, now = str(before)[:12], str(now)[:12]
            if key == "recipe":
                changes.append(f"another release of am-segm (mask recipe {before or 'unrecorded'}, now {now})")
                continue
            changes.append(f"{key} {before} -> {now}")
    return changes


def _reuse(layout: DatasetLayout, group: str, meta: dict[str, Any] | None, *, settings: Settings,
           model_id: str, worker: Mapping[str, str] | None) -> PreparedGroup | None:
    if meta is None or not _is_complete(meta):
        return None
    changes = _settings_changes(meta, settings, model_id, worker)
    only_scale = all(c.startswith("scale ") for c in changes)
    if changes and not (only_scale and _cut_at_this_factor(layout, group, meta, settings)):
        log.info("group %s: the earlier run's masks were made with other settings (%s): segmenting again",
                 group, "; ".join(changes))
        return None
    scale = _recorded_scale(meta, settings)
    if scale is None:
        return None
    plan = TilePlan.from_json(json.dumps(meta["plan"]))
    missing = sum(not layout.tile_source(group, t.index).is_file() for t in plan.tiles)
    if missing or not layout.source_norm(group).is_file():
        what = f"{missing} of its {len(plan.tiles)} tile(s)" if missing else f"{layout.source_norm(group)}"
        log.info("group %s: %s went missing since the earlier run: normalising and cutting again (the masks of an "
                 "unchanged image are kept)", group, what)
        return None
    if problem := _source_norm_problem(layout.source_norm(group), int(meta["source_height"]),
                                       int(meta["source_width"])):
        log.warning("group %s: %s; normalising and cutting again (the masks of an unchanged image are kept)",
                    group, problem)
        return None
    # Last: the only check that may read the image (to hash it, when its time changed).
    source_path = layout.source_image(group)
    recorded = meta["identity"].get("source")
    source = _same_source(source_path, recorded)
    if source is None:
        return None
    if "sha256" not in source:
        # A plan from before hashes were recorded: hashed now, once, so that a copy of it is reused too.
        source = {**source, "sha256": file_sha256(source_path)}
    if source != recorded:
        if recorded.get("mtime_ns") != source["mtime_ns"]:
            log.info("group %s: %s has another modification time but the same contents; its tiles are reused",
                     group, source_path)
        _write_json_atomic(layout.tile_plan(group), {**meta, "identity": {**meta["identity"], "source": source}})
    pending = tuple(t.index for t in plan.tiles if not layout.tile_mask(group, t.index).is_file())
    log.info("group %s: reusing %d tiles, %d still need a mask", group, len(plan.tiles), len(pending))
    return PreparedGroup(group, plan, int(meta["source_height"]), int(meta["source_width"]), scale, pending)


def _cut_at_this_factor(layout: DatasetLayout, group: str, meta: dict[str, Any], settings: Settings) -> bool:
    """Whether tiles planned with another ``scale`` setting were cut at the factor this one gives:
    ``--scale 0.32`` after ``auto`` chose 0.32, or ``auto`` after a factor it would choose itself
    (``auto`` after the default 1 on marks of the model's size). Re-segmenting thousands of tiles
    for a setting spelt differently would cost minutes for masks that come out the same. ``auto``
    is decided as a run decides it, from the normalised image the tiles were cut from."""
    recorded = meta.get("scale")
    if not isinstance(recorded, (int, float)) or isinstance(recorded, bool):
        return False
    if settings.scale != AUTO_SCALE:
        return float(settings.scale) == float(recorded)
    # One of another size is found by _reuse's own check of the normalised image, which follows.
    try:
        image = read_image(layout.source_norm(group))
    except InputError:  # missing or damaged: cut again, which rewrites it
        return False
    chosen = choose_scale(image, name=f"group {group}")
    if chosen != float(recorded):
        return False
    log.info("group %s: --scale auto gives %g, the factor its tiles were cut at: they are reused", group, chosen)
    return True


def _source_norm_problem(path: Path, height: int, width: int) -> str | None:
    """What is wrong with a kept normalised image, from its header: registration and the overlays
    read it beside the mask, so one damaged or of another size would fail them on every rerun."""
    try:
        header = read_header(path)
        check_complete(path)  # cut short: read by registration and the overlays, never rewritten if reused
    except InputError as exc:
        return f"the normalised image cannot be read ({exc})"
    if (header.height, header.width) != (height, width) or header.channels != 1 or header.dtype != np.uint8:
        return (f"the normalised image {path} is {header.width} x {header.height} px, {header.channels} channel(s) "
                f"of {header.dtype}, not the image's {width} x {height} px of 8-bit grey")
    return None


def reuse_group(layout: DatasetLayout, group: str, *, settings: Settings, model_id: str,
                worker: Mapping[str, str] | None = None) -> PreparedGroup | None:
    """The group's tiles from an identical earlier run, or None when they must be cut again.

    Reads meta.json and checks that tile files exist; the image is read only to hash it when
    its modification time changed but its size did not (or, once, for a plan written before
    hashes were recorded). Cheap enough to decide, before any worker starts, whether there is
    work at all. ``worker`` is :func:`worker_mask_settings` (None: the workers' defaults).
    """
    return _reuse(layout, group, _read_meta(layout.tile_plan(group)), settings=settings, model_id=model_id,
                  worker=worker)


class GroupTiler:
    """Cuts one group's tiles in chunks of tile rows, so a job can send a chunk while the next is cut.

    :meth:`normalise` removes what an older input left behind, normalises the image (written to
    ``source_norm``), plans the tiles and writes meta.json marked incomplete; :meth:`chunks` writes
    the tiles a row at a time, each file atomically, and yields every row with the pixels of the
    tiles that still need a mask; :meth:`finish` marks meta.json complete, so a complete plan never
    exists for tiles that are not all on disk.

    A run stopped before :meth:`finish` leaves an incomplete meta.json beside the masks it got.
    When the next run's source, settings and model are the same, it keeps those masks and the
    tiles already cut, and sends only the tiles without a mask; otherwise it starts afresh.
    """

    def __init__(self, layout: DatasetLayout, group: str, *, settings: Settings, model_id: str,
                 worker: Mapping[str, str] | None = None, rows_per_chunk: int = 1) -> None:
        if rows_per_chunk < 1:
            raise ValueError(f"rows_per_chunk must be at least 1, got {rows_per_chunk}")
        self.layout = layout
        self.group = group
        self._settings = settings
        self._model_id = model_id
        self._worker = worker
        self._rows_per_chunk = rows_per_chunk
        self._scaled: np.ndarray | None = None
        self._plan: TilePlan | None = None
        self._source_size = (0, 0)
        self._scale = nominal_scale(settings)
        self._identity: dict[str, Any] = {}
        self._written = 0
        self._resuming = False
        self._sent: list[int] = []
        #: Tiles whose masks an interrupted run left and this one keeps (known once normalised).
        self.masks_kept = 0

    @property
    def plan(self) -> TilePlan:
        if self._plan is None:
            raise RuntimeError(f"group {self.group}: normalise() must run before the plan is known")
        return self._plan

    def normalise(self, *, earlier: dict[str, Any] | None = None) -> TilePlan:
        """Read and normalise the image, write source_norm, and plan the tiles; returns the plan.

        ``earlier`` is the group's meta.json as the caller has just read it; None: read here.
        """
        layout, group, settings = self.layout, self.group, self._settings
        source_path = layout.source_image(group)
        # Before anything is removed: an image too thin to segment changes nothing on disk.
        check_group_size(layout, group, settings=settings)
        if earlier is None:
            # Read (and any damage reported) by reuse_group just before.
            earlier = _read_meta(layout.tile_plan(group), quiet=True)
        # Masks of a run with this same input and these same settings are kept: one that stopped while
        # cutting, or one whose normalised image or tiles went missing since (reuse_group said which).
        # The scale setting may be spelt otherwise (auto, or the factor auto chose): whether the factor itself
        # changed is known once the image is read, and the plan check below then cuts every tile again.
        same = earlier is not None and all(change.startswith("scale ") for change in
                                           _settings_changes(earlier, settings, self._model_id, self._worker))
        recorded = earlier["identity"].get("source") if same else None
        source = _same_source(source_path, recorded) if same else None
        self._resuming = source is not None
        current = source if source is not None else _file_stat(source_path)
        # A source that matched brings its hash along (recorded, or just checked); only a plan from
        # before hashes were recorded, or a new input, has to be hashed.
        known = current.get("sha256") if isinstance(current.get("sha256"), str) else None
        # Anything derived from an older input must not survive to be mistaken for a result.
        stale_dirs = [layout.stitched_dir(group), layout.am_coords_dir(group)]
        if not self._resuming:
            stale_dirs.append(layout.tiles_dir(group))
        for stale in stale_dirs:
            clear_output(stale)
        with ThreadPool(1, thread_name_prefix="am-hash") as hasher:
            # Hashed beside the normalisation (hashlib lets go of the GIL): the workers wait for the first tiles.
            digest: Future[str] | None = None if known else hasher.submit(file_sha256, source_path)
            image = read_image(source_path)
            check_image_size(image.shape[0], image.shape[1], scale=self._scale, name=f"image {source_path}")
            normalised = normalize(image, low_pct=settings.norm_low_pct, high_pct=settings.norm_high_pct,
                                   name=str(source_path))
            del image
            self._source_size = normalised.shape
            # Marks far from the model's scale come out in pieces: auto picks the factor that brings them in,
            # a fixed factor that leaves them out is warned about, with the --scale to use.
            self._scale = resolve_scale(normalised, settings.scale, name=f"group {group}")
            if self._scale != nominal_scale(settings):
                check_image_size(*self._source_size, scale=self._scale, name=f"image {source_path}")
            # Uncompressed: microscopy shrinks only 10-20 % at zlib's fastest level, which costs about
            # 0.8-1.4 s of CPU per 25 Mpx (benchmarks/png_bench.py) while the workers wait for their first tiles.
            write_tiff(layout.source_norm(group), normalised, compress=False)
            sha256 = known if digest is None else result_of(digest)
        self._identity = {"source": {**current, "sha256": sha256},
                          **_settings_identity(settings, self._model_id, self._worker)}
        self._scaled = rescale(normalised, scale=self._scale)
        del normalised
        self._plan = plan_tiles(self._scaled.shape[0], self._scaled.shape[1], tile_size=settings.tile_size,
                                overlap=settings.tile_overlap)
        if self._resuming and (earlier.get("plan") != json.loads(self._plan.to_json())
                               or _recorded_scale(earlier, settings) != self._scale):
            log.warning("group %s: the tile plan changed since the earlier run; cutting every tile again", group)
            self._resuming = False
            clear_output(layout.tiles_dir(group))
        self.masks_kept = 0
        if self._resuming:
            self.masks_kept = sum(layout.tile_mask(group, t.index).is_file() for t in self._plan.tiles)
        if self.masks_kept:  # none kept: nothing is resumed, every tile is segmented
            earlier_run = "a finished run" if _is_complete(earlier) else "an interrupted run"
            log.info("group %s: resuming %s, %d of %d tiles already have a mask",
                     group, earlier_run, self.masks_kept, len(self._plan.tiles))
        self._write_meta(complete=False)
        return self._plan

    def _write_meta(self, *, complete: bool) -> None:
        height, width = self._source_size
        _write_json_atomic(self.layout.tile_plan(self.group), {
            "version": META_VERSION,
            "complete": complete,
            "identity": self._identity,
            "source_height": height,
            "source_width": width,
            "scale": self._scale,
            "plan": json.loads(self.plan.to_json()),
        })

    def chunks(self) -> Iterator[TileChunk]:
        """Write the tiles ``rows_per_chunk`` tile rows at a time; yield each chunk once it is on disk."""
        plan, scaled = self.plan, self._scaled
        if scaled is None:
            raise RuntimeError(f"group {self.group}: its tiles were cut already (finish() has run)")
        self._written = 0
        self._sent = []
        rows = itertools.groupby(plan.tiles, key=lambda tile: tile.y)
        while batch := list(itertools.islice(rows, self._rows_per_chunk)):
            to_send = []
            for _, row in batch:
                for tile in row:
                    source = self.layout.tile_source(self.group, tile.index)
                    done = self._resuming and self.layout.tile_mask(self.group, tile.index).is_file()
                    if done and source.is_file():
                        self._written += 1
                        continue
                    pixels = read_tile(scaled, tile, plan)
                    write_atomic(source, encode_png(pixels, compression=1, huffman_only=True, row_filter="up"))
                    self._written += 1
                    if not done:
                        to_send.append((tile.index, pixels))
            self._sent += [index for index, _ in to_send]
            if to_send:
                yield TileChunk(self.group, tuple(to_send))

    def finish(self) -> PreparedGroup:
        """Mark meta.json complete (every tile is on disk now) and return the group; its pending tiles
        are those :meth:`chunks` sent (all of them, unless an interrupted run had masks for some)."""
        plan = self.plan
        if self._written != len(plan.tiles):
            raise RuntimeError(f"group {self.group}: {self._written} of {len(plan.tiles)} tiles are cut; "
                               "a plan must never claim tiles that are not on disk")
        height, width = self._source_size
        settings = self._settings
        # Marked complete last: a complete plan means every tile above is on disk.
        self._write_meta(complete=True)
        self._scaled = None
        at_scale = "" if self._scale == 1.0 else f" at scale {self._scale:g}"
        log.info("group %s: %dx%d image, %d tiles of %d px (overlap %d)%s", self.group, width, height,
                 len(plan.tiles), settings.tile_size, settings.tile_overlap, at_scale)
        return PreparedGroup(self.group, plan, height, width, self._scale, tuple(self._sent))


def reuse_or_recut_group(layout: DatasetLayout, group: str, *, settings: Settings, model_id: str,
                         worker: Mapping[str, str] | None = None) -> PreparedGroup | None:
    """The group as an earlier run left it: its tiles reused (:func:`reuse_group`), or, where every tile has
    its mask but reuse was refused, cut again with nothing to segment; None where a job must cut it.

    meta.json is read once for both decisions (and for the re-cut itself): nothing is written to it
    between them, as reuse writes it only when it reuses the tiles.
    """
    meta = _read_meta(layout.tile_plan(group))
    reused = _reuse(layout, group, meta, settings=settings, model_id=model_id, worker=worker)
    if reused is not None:
        return reused
    return _recut_masked_group(layout, group, meta, settings=settings, model_id=model_id, worker=worker)


def _recut_masked_group(layout: DatasetLayout, group: str, meta: dict[str, Any] | None, *, settings: Settings,
                        model_id: str, worker: Mapping[str, str] | None) -> PreparedGroup | None:
    """The group of an earlier run whose every tile has its mask but that :func:`_reuse` refused (a tile or the
    normalised image went missing, the scale spelt otherwise), cut again here with nothing to segment; None
    where a tile needs a mask, or none was planned, and a job must cut it. ``meta`` is its plan as
    :func:`_reuse` was given it.

    So that a rerun whose masks are all in place starts no worker (on AWS, no GPU task) for a job of
    no tile. Only a plan whose every mask exists is tried: normalising costs seconds on a large image.
    """
    if meta is None:
        return None
    tiles = TilePlan.from_json(json.dumps(meta["plan"])).tiles  # checked by _read_meta
    if not tiles or not all(layout.tile_mask(group, t.index).is_file() for t in tiles):
        return None
    # Masks of another model, other settings or another input are not kept: the job cuts the group
    # again, and normalising it here first would read the image twice before any worker starts.
    if not all(change.startswith("scale ") for change in _settings_changes(meta, settings, model_id, worker)):
        return None
    if settings.scale != AUTO_SCALE and _recorded_scale(meta, settings) != nominal_scale(settings):
        return None
    # Name and size only: where the file's time changed, normalise() hashes it, once.
    if not _may_be_recorded(_file_stat(layout.source_image(group)), meta["identity"].get("source")):
        return None
    tiler = GroupTiler(layout, group, settings=settings, model_id=model_id, worker=worker)
    tiler.normalise(earlier=meta)
    if tiler.masks_kept != len(tiler.plan.tiles):
        return None  # another input or plan: its masks are gone, and the job cuts the group again
    for chunk in tiler.chunks():
        raise RuntimeError(f"group {group}: tile(s) {[i for i, _ in chunk.tiles]} need a mask after all")
    return tiler.finish()


def prepare_group(layout: DatasetLayout, group: str, *, settings: Settings, model_id: str,
                  worker: Mapping[str, str] | None = None) -> PreparedGroup:
    """Normalise and tile one group, or reuse the tiles of an identical earlier run."""
    reused = reuse_group(layout, group, settings=settings, model_id=model_id, worker=worker)
    if reused is not None:
        return reused
    tiler = GroupTiler(layout, group, settings=settings, model_id=model_id, worker=worker)
    tiler.normalise()
    for _ in tiler.chunks():
        pass
    return tiler.finish()


def source_replaced(layout: DatasetLayout, group: str) -> Path | None:
    """The group's source image where it is not the file its tiles (and so its masks) were made from, else None.

    For a step that reads the pipeline's outputs without making them again (``am.register``): an image
    replaced since the pipeline ran (a forced ``am.synth dataset``, another file of the same name) would
    get the ids of another image's marks. Where no plan was recorded (masks made elsewhere) or the group
    has no source image, nothing tells, and None is returned. Same rule as reuse: name, size and time,
    or the recorded SHA-256 where only the time changed.
    """
    meta = _read_meta(layout.tile_plan(group), quiet=True)
    recorded = meta.get("identity", {}).get("source") if meta is not None else None
    folder = layout.source_dir / group
    if not isinstance(recorded, dict) or not folder.is_dir():
        return None
    try:
        source = layout.source_image(group)
    except InputError as exc:  # no image, or several: the pipeline says so where it reads one
        log.debug("group %s: no source image to compare with its tile plan (%s)", group, exc)
        return None
    return None if _same_source(source, recorded) is not None else source
