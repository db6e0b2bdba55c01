"""Preparation stage: normalise a group's image, plan its tiles and write them to the dataset.

Work already done is reused: ``tiles/<group>/meta.json`` records what the tiles were made
from (source file, normalisation, scale, tile geometry, model). When all of that is unchanged
the tiles are kept and only tiles without a mask are sent out again, so a rerun after a
failure or Ctrl-C redoes only what is missing::

    prepared = prepare_group(layout, "g1", settings=settings, model_id=model_id)
    prepared.pending   # tile indices that still need a mask
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from am.dataset import DatasetLayout
from am.files import write_atomic
from am.imageio import read_image, write_png, write_tiff
from am.normalize import normalize
from am.settings import Settings
from am.tiling import TilePlan, plan_tiles, read_tile

log = logging.getLogger(__name__)

META_VERSION = 1


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


def _source_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _identity(path: Path, settings: Settings, model_id: str) -> dict[str, Any]:
    return {
        "source": _source_identity(path),
        "norm_pct": [settings.norm_low_pct, settings.norm_high_pct],
        "scale": settings.scale,
        "tile_size": settings.tile_size,
        "tile_overlap": settings.tile_overlap,
        "model": model_id,
    }


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


def _read_meta(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable tile plan %s (%s); tiles will be made again", path, exc)
        return None
    return data if isinstance(data, dict) and data.get("version") == META_VERSION else None


def rescale(image: np.ndarray, *, scale: float) -> np.ndarray:
    """Resize so the marks match the scale the model was trained at (scale 0.5 halves the image)."""
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def _reuse(layout: DatasetLayout, group: str, meta: dict[str, Any] | None,
           identity: dict[str, Any]) -> PreparedGroup | None:
    if meta is None or meta.get("identity") != identity or not layout.source_norm(group).is_file():
        return None
    plan = TilePlan.from_json(json.dumps(meta["plan"]))
    if not all(layout.tile_source(group, t.index).is_file() for t in plan.tiles):
        return None
    pending = tuple(t.index for t in plan.tiles if not layout.tile_mask(group, t.index).is_file())
    log.info("group %s: reusing %d tiles, %d still need a mask", group, len(plan.tiles), len(pending))
    return PreparedGroup(group, plan, int(meta["source_height"]), int(meta["source_width"]),
                         float(identity["scale"]), pending)


def prepare_group(layout: DatasetLayout, group: str, *, settings: Settings, model_id: str) -> PreparedGroup:
    """Normalise and tile one group, or reuse the tiles of an identical earlier run."""
    source_path = layout.source_image(group)
    identity = _identity(source_path, settings, model_id)
    meta_path = layout.tile_plan(group)
    reused = _reuse(layout, group, _read_meta(meta_path), identity)
    if reused is not None:
        return reused

    # Anything derived from an older input must not survive to be mistaken for a result.
    for stale in (layout.tiles_dir(group), layout.stitched_dir(group), layout.am_coords_dir(group)):
        if stale.exists():
            shutil.rmtree(stale)

    image = read_image(source_path)
    normalised = normalize(image, low_pct=settings.norm_low_pct, high_pct=settings.norm_high_pct,
                           name=str(source_path))
    del image
    height, width = normalised.shape
    write_tiff(layout.source_norm(group), normalised)
    scaled = rescale(normalised, scale=settings.scale)
    plan = plan_tiles(scaled.shape[0], scaled.shape[1], tile_size=settings.tile_size, overlap=settings.tile_overlap)
    for tile in plan.tiles:
        write_png(layout.tile_source(group, tile.index), read_tile(scaled, tile, plan))
    # The plan is written last: its presence means every tile above is complete.
    _write_json_atomic(meta_path, {
        "version": META_VERSION,
        "identity": identity,
        "source_height": height,
        "source_width": width,
        "plan": json.loads(plan.to_json()),
    })
    log.info("group %s: %dx%d image, %d tiles of %d px (overlap %d)", group, width, height,
             len(plan.tiles), settings.tile_size, settings.tile_overlap)
    return PreparedGroup(group, plan, height, width, settings.scale, tuple(t.index for t in plan.tiles))
