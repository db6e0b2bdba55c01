"""How far a task has come, read from its dataset folder rather than reported by the pipeline.

The pipeline writes ``tiles/<group>/meta.json`` as soon as the group's tiles are planned (before
they are cut) and one mask file per tile as workers deliver them. Until the plan exists the
total is unknown and the progress is None;
after that the fraction of tiles with a mask is an honest measure that survives restarts and
needs no channel from the pipeline process::

    tile_progress(DatasetLayout(task_dir))   # None before tiling, else 0.0 .. 1.0
"""

from __future__ import annotations

import json
import logging

from am.dataset import DatasetLayout

log = logging.getLogger(__name__)


def tile_progress(layout: DatasetLayout, group: str) -> float | None:
    """Fraction of the group's tiles that have a mask, or None while the tiles are not planned yet."""
    meta_path = layout.tile_plan(group)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        total = len(meta["plan"]["tiles"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("tile plan %s not readable yet (%s)", meta_path, exc)
        return None
    if total == 0:
        return None
    mask_dir = layout.tiles_dir(group) / "mask"
    try:
        done = sum(1 for p in mask_dir.iterdir() if p.suffix == ".png" and not p.name.startswith("."))
    except FileNotFoundError:
        done = 0
    return round(min(done, total) / total, 4)


__all__ = ["tile_progress"]
