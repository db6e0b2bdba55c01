"""Write a registration as the files of the dataset layout (README, "Dataset layout": ``am_coords/<group>/``).

- ``am_coordinates.png``: 16-bit label image of the input's size, 0 = background, else the id;
- ``am_coordinates.csv``: ``id,row,col,x,y,area_px``, one line per numbered mark, by id;
- ``overlay.png``: the source with outlines and ids (downscaled if the image is large);
- ``overlay_tiles/overlay_y*_x*.png``: full-resolution tiles, only when ids do not fit the overview;
- ``registration.json``: the fit, counts and warnings; written last, so its presence means the
  other files are complete.

Each file is written to a temporary name in the same folder and renamed, so a reader never sees
half a file and an interrupted run leaves the previous outputs intact::

    write_outputs(Path("ds/am_coords/g1"), reg, source=grey8)
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np

from am.errors import InputError
from am.imageio import encode_png
from am.register import overlay
from am.register.registration import Registration

log = logging.getLogger(__name__)

IDS_NAME = "am_coordinates.png"
CSV_NAME = "am_coordinates.csv"
OVERLAY_NAME = "overlay.png"
JSON_NAME = "registration.json"
TILES_DIR = "overlay_tiles"
CSV_COLUMNS = ("id", "row", "col", "x", "y", "area_px")
# Fast PNG compression: the id image is mostly zeros and compresses well even at level 1.
PNG_COMPRESSION = 1


def write_outputs(
    out_dir: Path, registration: Registration, *, source: np.ndarray, shown_as: Path | None = None
) -> None:
    """Write the registration's files into ``out_dir`` (created if needed); ``source`` is 8-bit grey.

    ``shown_as`` is the folder the log names instead of ``out_dir``: where the files will be once
    ``out_dir``, a staging folder deleted moments later, is moved there.
    """
    out_dir = Path(out_dir)
    shown = Path(shown_as) if shown_as is not None else out_dir
    source = overlay.check_source(source, registration)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out_dir}: {exc}") from exc
    _write_bytes(out_dir / IDS_NAME, _encode_png(registration.ids, out_dir / IDS_NAME))
    _write_bytes(out_dir / CSV_NAME, table_csv(registration.table).encode("ascii"))
    centres = overlay.label_centres(registration)
    overview = overlay.render_overview(registration, source, centres=centres)
    _write_bytes(out_dir / OVERLAY_NAME, _encode_png(overview, out_dir / OVERLAY_NAME))
    _write_tiles(out_dir / TILES_DIR, registration, source, centres=centres, shown=shown / TILES_DIR)
    text = json.dumps(registration.to_json_dict(), indent=2) + "\n"
    _write_bytes(out_dir / JSON_NAME, text.encode("utf-8"))
    log.debug("wrote %s, %s, %s and %s in %s", IDS_NAME, CSV_NAME, OVERLAY_NAME, JSON_NAME, out_dir)


def table_csv(table: np.ndarray) -> str:
    """The mark table as CSV text; x and y to 0.01 px, each still rounding to the mark's pixel."""
    out = io.StringIO()
    out.write(",".join(CSV_COLUMNS) + "\n")
    for rec in table.tolist():
        out.write(f"{rec[0]},{rec[1]},{rec[2]},{coordinate_text(rec[3])},{coordinate_text(rec[4])},{rec[5]}\n")
    return out.getvalue()


def coordinate_text(value: float) -> str:
    """``value`` to 0.01 px, such that the text rounds (half to even) to the pixel ``value`` rounds to.

    The table's x,y is a point of the mark by the pixel it rounds to; two decimals can land it on
    an exact .5 that rounds the other way (1078.5022 is pixel 1079, "1078.50" pixel 1078), which
    may be background. Such a text is moved 0.01 px towards the mark's pixel.
    """
    text = f"{value:.2f}"
    pixel = np.rint(value)
    written = float(text)
    if np.rint(written) != pixel:
        text = f"{written + (0.01 if pixel > written else -0.01):.2f}"
    return text


def _write_tiles(
    tiles_dir: Path, registration: Registration, source: np.ndarray, *, centres: np.ndarray, shown: Path
) -> None:
    """Overlay tiles when the overview cannot show every id readably; stale tiles are removed.

    The log names ``shown``, the folder the tiles end up in (``tiles_dir`` may be in a staging folder).
    """
    stale = set(tiles_dir.glob("overlay_y*_x*.png")) if tiles_dir.is_dir() else set()
    if overlay.needs_tiles(registration):
        tiles_dir.mkdir(exist_ok=True)
        count = 0
        for name, tile in overlay.render_tiles(registration, source, centres=centres):
            path = tiles_dir / f"{name}.png"
            _write_bytes(path, _encode_png(tile, path))
            stale.discard(path)
            count += 1
        zoom = overlay.tile_zoom(registration)
        log.info("ids do not fit the overview: wrote %d tiles in %s%s", count, shown,
                 f", enlarged {zoom} times" if zoom > 1 else " at full resolution")
    for path in stale:
        path.unlink()
    if tiles_dir.is_dir() and not any(tiles_dir.iterdir()):
        tiles_dir.rmdir()


def _encode_png(image: np.ndarray, path: Path) -> bytes:
    """PNG bytes of an id image or a BGR overlay, without row filters (as fast again, and no larger here)."""
    try:
        return encode_png(image, compression=PNG_COMPRESSION, bgr=True, row_filter="none")
    except InputError as exc:
        raise InputError(f"cannot encode {path.name} as PNG: {exc}") from exc


def _write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it over ``path``."""
    # A unique name opened exclusively (not mkstemp) so the file gets the usual umask permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc}; check the folder's permissions and free space") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
