"""Tiling stage: plan overlapping tiles over an image, cut them out, and stitch results back.

A :class:`TilePlan` holds every tile's read window (``tile_size`` square, inside the image
unless the image is smaller than a tile) and its own region: the part of the image it writes
when stitching. Each pixel is owned by the tile in which it lies farthest from the edge, i.e.
overlaps are cut at their midpoints, so the model's weak border predictions are discarded and
the own regions partition the image exactly. All overlap arithmetic lives in :func:`plan_tiles`::

    plan = plan_tiles(image.shape[0], image.shape[1], tile_size=512, overlap=128)
    stitcher = Stitcher(plan)
    for tile, pixels in split(image, plan):
        stitcher.add(tile.index, segment(pixels))
    mask = stitcher.finalize()             # exactly image.shape, uint8
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from am.errors import InputError, StitchError

log = logging.getLogger(__name__)

PLAN_VERSION = 1
# Errors list at most this many tile indices, then say how many more.
_MAX_LISTED = 50


@dataclass(frozen=True)
class Tile:
    """One tile: its read window's top-left (``y``, ``x``) and the half-open image region it owns."""

    index: int
    y: int
    x: int
    own_y0: int
    own_y1: int
    own_x0: int
    own_x1: int

    @property
    def own_slices(self) -> tuple[slice, slice]:
        """The owned region in image coordinates."""
        return slice(self.own_y0, self.own_y1), slice(self.own_x0, self.own_x1)

    @property
    def own_in_tile(self) -> tuple[slice, slice]:
        """The owned region in the tile's own coordinates (to crop a tile-sized result)."""
        return (
            slice(self.own_y0 - self.y, self.own_y1 - self.y),
            slice(self.own_x0 - self.x, self.own_x1 - self.x),
        )

    @property
    def own_shape(self) -> tuple[int, int]:
        return self.own_y1 - self.own_y0, self.own_x1 - self.own_x0


@dataclass(frozen=True)
class TilePlan:
    """Tiles in row-major order over a ``height`` x ``width`` image; validated when built."""

    height: int
    width: int
    tile_size: int
    overlap: int
    tiles: tuple[Tile, ...] = field(repr=False)
    rows: int = field(init=False)
    cols: int = field(init=False)

    def __post_init__(self) -> None:
        _check_dimensions(self.height, self.width, self.tile_size, self.overlap)
        ys = sorted({t.y for t in self.tiles})
        xs = sorted({t.x for t in self.tiles})
        object.__setattr__(self, "rows", len(ys))
        object.__setattr__(self, "cols", len(xs))
        _check_grid(self, ys, xs)

    def __len__(self) -> int:
        return len(self.tiles)

    def tile(self, index: int) -> Tile:
        """The tile with this index; InputError if the plan has none."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.tiles):
            raise InputError(f"tile index {index!r} is not in this plan (0..{len(self.tiles) - 1})")
        return self.tiles[int(index)]

    def to_json(self) -> str:
        """The plan as JSON (``meta.json``): sizes plus each tile's window and own region."""
        data = {
            "version": PLAN_VERSION,
            "height": self.height,
            "width": self.width,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "rows": self.rows,
            "cols": self.cols,
            "tiles": [
                {"index": t.index, "y": t.y, "x": t.x, "own": [t.own_y0, t.own_y1, t.own_x0, t.own_x1]}
                for t in self.tiles
            ],
        }
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "tile plan") -> TilePlan:
        """Parse and validate :meth:`to_json` output; InputError naming ``source`` if it is malformed."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{source} is not valid JSON ({exc}); plan the tiles again") from exc
        try:
            return _plan_from_dict(data)
        except InputError as exc:
            raise InputError(f"{source} is not a valid tile plan: {exc}; plan the tiles again") from exc

    def save(self, path: Path) -> None:
        """Write the plan as JSON, atomically, creating parent folders."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(self.to_json(), encoding="utf-8")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> TilePlan:
        """Read a plan written by :meth:`save`; InputError naming the file if it is missing or malformed."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise InputError(f"tile plan {path} does not exist; plan the tiles first") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"tile plan {path} cannot be read ({exc}); plan the tiles again") from exc
        return cls.from_json(text, source=f"tile plan {path}")


def plan_tiles(height: int, width: int, *, tile_size: int = 512, overlap: int = 128) -> TilePlan:
    """Plan ``tile_size`` square tiles overlapping by at least ``overlap`` px over a ``height`` x ``width`` image.

    Along each axis independently, tiles start at 0, stride, 2*stride, ... (stride = tile_size -
    overlap) and the last one is shifted back to end exactly at the image edge, so no tile reads
    past the image; an axis shorter than a tile gets one tile at 0, read with reflect padding.
    Overlaps are cut at their midpoints to decide which tile owns which pixels.
    """
    _check_dimensions(height, width, tile_size, overlap)
    ys, y_cuts = _axis(height, tile_size, overlap)
    xs, x_cuts = _axis(width, tile_size, overlap)
    tiles = tuple(
        Tile(
            index=r * len(xs) + c,
            y=y,
            x=x,
            own_y0=y_cuts[r],
            own_y1=y_cuts[r + 1],
            own_x0=x_cuts[c],
            own_x1=x_cuts[c + 1],
        )
        for r, y in enumerate(ys)
        for c, x in enumerate(xs)
    )
    return TilePlan(height=height, width=width, tile_size=tile_size, overlap=overlap, tiles=tiles)


def _axis(length: int, tile_size: int, overlap: int) -> tuple[list[int], list[int]]:
    """Tile starts along one axis and the ownership boundaries (len(starts) + 1 of them, 0 .. length)."""
    if length <= tile_size:
        return [0], [0, length]
    stride = tile_size - overlap
    count = -(-(length - tile_size) // stride) + 1
    starts = [i * stride for i in range(count - 1)] + [length - tile_size]
    # Midpoint of the overlap [starts[i+1], starts[i] + tile_size): the nearer tile centre wins.
    cuts = [(a + b + tile_size) // 2 for a, b in itertools.pairwise(starts)]
    return starts, [0, *cuts, length]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_dimensions(height: Any, width: Any, tile_size: Any, overlap: Any) -> None:
    for key, value in (("height", height), ("width", width), ("tile_size", tile_size), ("overlap", overlap)):
        if not _is_int(value):
            raise InputError(f"{key} must be an integer, got {value!r}")
    if height < 1 or width < 1:
        raise InputError(f"image size {height} x {width} has no pixels; give height and width of at least 1")
    if tile_size < 1:
        raise InputError(f"tile_size {tile_size} must be at least 1 px")
    if not 0 <= overlap < tile_size:
        raise InputError(f"overlap {overlap} must be at least 0 and less than tile_size {tile_size}")


def _check_grid(plan: TilePlan, ys: list[int], xs: list[int]) -> None:
    """Check that the tiles form a row-major grid whose own regions partition the image inside the windows."""
    if not plan.tiles:
        raise InputError("the plan has no tiles")
    if len(plan.tiles) != len(ys) * len(xs):
        raise InputError(f"{len(plan.tiles)} tiles do not form a grid of {len(ys)} rows x {len(xs)} columns")
    y_bounds = _axis_bounds(plan.tiles, ys, xs, axis="y")
    x_bounds = _axis_bounds(plan.tiles, ys, xs, axis="x")
    for name, starts, bounds, length in (("y", ys, y_bounds, plan.height), ("x", xs, x_bounds, plan.width)):
        if len(starts) == 1 and length < plan.tile_size:
            if starts[0] != 0:
                raise InputError(f"the single tile along {name} must start at 0, not {starts[0]}")
        elif starts[0] < 0 or starts[-1] + plan.tile_size > length:
            raise InputError(f"tile windows along {name} ({starts}) leave the image (length {length})")
        if bounds[0][0] != 0 or bounds[-1][1] != length:
            raise InputError(f"own regions along {name} do not cover 0..{length}")
        for i, ((lo, hi), start) in enumerate(zip(bounds, starts, strict=True)):
            if not (start <= lo < hi <= start + plan.tile_size):
                raise InputError(f"own region {lo}..{hi} along {name} is empty or outside its window at {start}")
            if i and bounds[i - 1][1] != lo:
                raise InputError(f"own regions along {name} have a gap or overlap at {lo}")


def _axis_bounds(tiles: tuple[Tile, ...], ys: list[int], xs: list[int], *, axis: str) -> list[tuple[int, int]]:
    bounds: dict[int, tuple[int, int]] = {}
    for i, t in enumerate(tiles):
        r, c = divmod(i, len(xs))
        if t.index != i or t.y != ys[r] or t.x != xs[c]:
            raise InputError(f"tile {t.index} is out of row-major order at position {i}")
        key, own = (r, (t.own_y0, t.own_y1)) if axis == "y" else (c, (t.own_x0, t.own_x1))
        if bounds.setdefault(key, own) != own:
            raise InputError(f"tile {t.index} owns {axis} {own}, unlike the other tiles of its row or column")
    return [bounds[k] for k in range(len(ys) if axis == "y" else len(xs))]


def _plan_from_dict(data: Any) -> TilePlan:
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("version") != PLAN_VERSION:
        raise InputError(f"version {data.get('version')!r} is not supported (expected {PLAN_VERSION})")
    for key in ("height", "width", "tile_size", "overlap", "rows", "cols"):
        if not _is_int(data.get(key)):
            raise InputError(f"{key} must be an integer, got {data.get(key)!r}")
    raw_tiles = data.get("tiles")
    if not isinstance(raw_tiles, list):
        raise InputError("tiles must be a list")
    tiles = []
    for item in raw_tiles:
        if not (
            isinstance(item, dict)
            and all(_is_int(item.get(k)) for k in ("index", "y", "x"))
            and isinstance(item.get("own"), list)
            and len(item["own"]) == 4
            and all(_is_int(v) for v in item["own"])
        ):
            raise InputError(f"tile entry {str(item)[:100]} must have integer index, y, x and a 4-integer 'own'")
        tiles.append(Tile(item["index"], item["y"], item["x"], *item["own"]))
    plan = TilePlan(
        height=data["height"], width=data["width"], tile_size=data["tile_size"], overlap=data["overlap"],
        tiles=tuple(tiles),
    )
    if (plan.rows, plan.cols) != (data["rows"], data["cols"]):
        raise InputError(
            f"rows x cols {data['rows']} x {data['cols']} do not match the tiles ({plan.rows} x {plan.cols})"
        )
    return plan


def read_tile(image: np.ndarray, tile: Tile, plan: TilePlan) -> np.ndarray:
    """The tile's ``tile_size`` square window as a contiguous copy.

    Reflect padding (like cv2.BORDER_REFLECT_101) fills only an axis shorter than a tile.
    Extra trailing axes (colour) are carried along.
    """
    _check_image(image, plan)
    window = image[tile.y : tile.y + plan.tile_size, tile.x : tile.x + plan.tile_size]
    pad_y = plan.tile_size - window.shape[0]
    pad_x = plan.tile_size - window.shape[1]
    if pad_y or pad_x:
        widths = [(0, pad_y), (0, pad_x)] + [(0, 0)] * (window.ndim - 2)
        return np.pad(window, widths, mode="reflect")
    return window.copy()


def split(image: np.ndarray, plan: TilePlan) -> Iterator[tuple[Tile, np.ndarray]]:
    """Yield each tile with its pixels, in index order, one tile in memory at a time."""
    _check_image(image, plan)
    for tile in plan.tiles:
        yield tile, read_tile(image, tile, plan)


def _check_image(image: np.ndarray, plan: TilePlan) -> None:
    if image.ndim < 2 or image.shape[:2] != (plan.height, plan.width):
        raise InputError(
            f"image of shape {image.shape} does not match the tile plan's {plan.height} x {plan.width}; "
            "plan the tiles for this image"
        )


class Stitcher:
    """Assemble tile results into one image, writing only each tile's own region.

    The output is allocated once; ``add`` copies in place, so memory stays at one output array
    however large the image. Tiles may arrive in any order and more than once (delivery is at
    least once): a repeat with identical content is accepted, a differing one is a StitchError.
    Safe to call from several threads.
    """

    def __init__(self, plan: TilePlan, *, dtype: DTypeLike = np.uint8) -> None:
        self.plan = plan
        self.dtype = np.dtype(dtype)
        self._out = np.zeros((plan.height, plan.width), dtype=self.dtype)
        self._added: set[int] = set()
        self._finalized = False
        self._lock = threading.Lock()

    def add(self, index: int, tile_image: np.ndarray) -> None:
        """Copy the own region of ``tile_image`` (``tile_size`` square) for tile ``index`` into the output."""
        size = self.plan.tile_size
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.plan):
            raise StitchError(f"tile index {index!r} is not in the plan (0..{len(self.plan) - 1})")
        tile_image = np.asarray(tile_image)
        if tile_image.shape != (size, size):
            raise StitchError(f"tile {index} has shape {tile_image.shape}; expected ({size}, {size})")
        if not np.can_cast(tile_image.dtype, self.dtype, casting="safe"):
            raise StitchError(f"tile {index} has pixel type {tile_image.dtype}, which does not fit {self.dtype}")
        tile = self.plan.tiles[int(index)]
        own = tile_image[tile.own_in_tile]
        with self._lock:
            if self._finalized:
                raise StitchError(f"tile {index} arrived after the image was finalised")
            target = self._out[tile.own_slices]
            if int(index) in self._added:
                if not np.array_equal(target, own):
                    raise StitchError(f"tile {index} was delivered twice with different content")
                log.debug("tile %d delivered again with the same content", index)
                return
            target[...] = own
            self._added.add(int(index))

    def missing(self) -> list[int]:
        """Indices of tiles not added yet, ascending."""
        with self._lock:
            return [i for i in range(len(self.plan)) if i not in self._added]

    @property
    def is_complete(self) -> bool:
        with self._lock:
            return len(self._added) == len(self.plan)

    def finalize(self) -> np.ndarray:
        """The stitched image (height x width); StitchError naming the missing tiles if any are."""
        missing = self.missing()
        if missing:
            listed = ", ".join(str(i) for i in missing[:_MAX_LISTED])
            more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
            raise StitchError(
                f"cannot stitch: {len(missing)} of {len(self.plan)} tile(s) missing: {listed}{more}; "
                "re-run those tiles"
            )
        with self._lock:
            self._finalized = True
        return self._out


__all__ = ["Stitcher", "Tile", "TilePlan", "plan_tiles", "read_tile", "split"]
