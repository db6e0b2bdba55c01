"""Draw a registration over the source image so a person can check the numbering.

Numbered marks get a green outline and their id in yellow; marks left without an id (debris,
duplicates) a red circle; grid nodes without a mark a small blue cross. Ids are drawn at a size
that fits one grid cell. An image larger than :data:`OVERVIEW_MAX_SIDE` is drawn as a downscaled
overview; when ids no longer fit a cell there, the overview labels only every k-th node (as
landmarks) and :func:`render_tiles` yields tiles with every id, at full resolution or, where a
cell is too small for a readable id even there (a dense grid), enlarged :func:`tile_zoom` times::

    overview = render_overview(reg, source)
    if needs_tiles(reg): for name, tile in render_tiles(reg, source): ...
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
from scipy import ndimage

from am.errors import InputError
from am.register.registration import Registration

OVERVIEW_MAX_SIDE = 4096
TILE_SIDE = 2048
# Below this text height (px) an id is not readable.
MIN_TEXT_PX = 7
# Tiles are enlarged at most this many times (a 5-digit id in a cell of 12 px needs 3).
MAX_TILE_ZOOM = 8
FONT = cv2.FONT_HERSHEY_SIMPLEX
OUTLINE_BGR = (60, 220, 60)
TEXT_BGR = (0, 240, 255)
OFF_LATTICE_BGR = (40, 40, 255)
EMPTY_BGR = (255, 140, 0)
# Pixels kept between an id's outline and the image's edge.
LABEL_MARGIN = 1


def check_source(source: np.ndarray, registration: Registration) -> np.ndarray:
    """The source as 8-bit grey of the mask's size, or an InputError saying what differs."""
    if not isinstance(source, np.ndarray) or source.ndim not in (2, 3):
        raise InputError(f"the overlay source must be a 2-D grey image, got shape {getattr(source, 'shape', None)}")
    if source.ndim == 3:
        source = cv2.cvtColor(source[..., :3], cv2.COLOR_BGR2GRAY) if source.shape[2] >= 3 else source[..., 0]
    if source.shape != registration.ids.shape:
        raise InputError(
            f"the overlay source is {source.shape[1]} x {source.shape[0]} px but the mask is "
            f"{registration.ids.shape[1]} x {registration.ids.shape[0]} px: use source_norm of the same group"
        )
    if source.dtype != np.uint8:
        raise InputError(f"the overlay source must be the normalised 8-bit image, got {source.dtype}")
    return source


def overview_scale(registration: Registration) -> float:
    """How much the overview overlay shrinks the image, so a 20000 px acquisition stays a viewable PNG."""
    return min(1.0, OVERVIEW_MAX_SIDE / max(registration.ids.shape))


def _font_scale(registration: Registration, scale: float, cells: int = 1) -> float:
    """The font scale whose widest id fits ``cells`` grid cells at image ``scale``."""
    cell = max(1.0, min(registration.pitch_x, abs(registration.pitch_y)) * scale * cells)
    text = str(registration.rows * registration.cols)
    (w, h), _ = cv2.getTextSize(text, FONT, 1.0, 1)
    return min(0.85 * cell / w, 0.3 * cell / h)


def _text_height(font_scale: float) -> float:
    return cv2.getTextSize("0", FONT, font_scale, 1)[0][1]


def needs_tiles(registration: Registration) -> bool:
    """Whether ids are unreadable in the overview, so tiles must carry them."""
    return _text_height(_font_scale(registration, overview_scale(registration))) < MIN_TEXT_PX


def tile_zoom(registration: Registration) -> int:
    """How many times the tiles enlarge the image: 1 where a cell holds a readable id at full
    resolution, more on dense grids (a 150 x 150 grid of 20 px cells: 5 px ids at full resolution)."""
    return next((zoom for zoom in range(1, MAX_TILE_ZOOM + 1)
                 if _text_height(_font_scale(registration, float(zoom))) >= MIN_TEXT_PX), MAX_TILE_ZOOM)


def label_centres(registration: Registration) -> np.ndarray:
    """Where each id's text goes, shape (rows*cols + 1, 2) indexed by id: its mark's bounding-box centre.

    The table's point lies inside the mark but, for a crescent or a "C", at its edge; text centred
    there would sit between two marks.
    """
    centres = np.full((registration.rows * registration.cols + 1, 2), np.nan)
    for index, found in enumerate(ndimage.find_objects(registration.ids), start=1):
        if found is not None and index < len(centres):
            rows, cols = found
            centres[index] = ((cols.start + cols.stop - 1) / 2.0, (rows.start + rows.stop - 1) / 2.0)
    ids = registration.table["id"]
    unset = np.isnan(centres[ids, 0])
    centres[ids[unset]] = np.column_stack([registration.table["x"], registration.table["y"]])[unset]
    return centres


def render_overview(
    registration: Registration, source: np.ndarray, *, centres: np.ndarray | None = None
) -> np.ndarray:
    """The whole image (downscaled if large) with outlines, markers and readable ids or landmarks.

    ``centres`` (from :func:`label_centres`) saves recomputing them when tiles are drawn too.
    """
    source = check_source(source, registration)
    centres = label_centres(registration) if centres is None else centres
    scale = overview_scale(registration)
    h, w = registration.ids.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = source if scale == 1.0 else cv2.resize(source, size, interpolation=cv2.INTER_AREA)
    ids = registration.ids if scale == 1.0 else cv2.resize(registration.ids, size,
                                                           interpolation=cv2.INTER_NEAREST_EXACT)
    return _draw(registration, grey, ids, centres=centres, offset=(0.0, 0.0), scale=scale,
                 every=landmark_step(registration))


def render_tiles(
    registration: Registration, source: np.ndarray, *, centres: np.ndarray | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Tiles of at most :data:`TILE_SIDE` px with every id, named ``overlay_yYYYYY_xXXXXX`` by their
    top-left pixel in the image; each covers ``TILE_SIDE / tile_zoom`` image pixels, enlarged."""
    source = check_source(source, registration)
    centres = label_centres(registration) if centres is None else centres
    zoom = tile_zoom(registration)
    side = max(1, TILE_SIDE // zoom)
    h, w = registration.ids.shape
    for y0 in range(0, h, side):
        for x0 in range(0, w, side):
            y1, x1 = min(h, y0 + side), min(w, x0 + side)
            grey, ids = source[y0:y1, x0:x1], registration.ids[y0:y1, x0:x1]
            if zoom > 1:
                size = ((x1 - x0) * zoom, (y1 - y0) * zoom)
                grey = cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)
                ids = cv2.resize(ids, size, interpolation=cv2.INTER_NEAREST_EXACT)
            tile = _draw(registration, grey, ids, centres=centres, offset=(float(x0), float(y0)), scale=float(zoom),
                         every=1)
            yield f"overlay_y{y0:06d}_x{x0:06d}", tile


def _draw(
    registration: Registration, grey: np.ndarray, ids: np.ndarray, *, centres: np.ndarray,
    offset: tuple[float, float], scale: float, every: int,
) -> np.ndarray:
    """Draw on a (possibly scaled, possibly cropped) view whose pixel (0, 0) is image ``offset``."""
    canvas = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    canvas[_outline(ids)] = OUTLINE_BGR
    height, width = grey.shape
    pitch = min(registration.pitch_x, abs(registration.pitch_y)) * scale

    def view(xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy, float).reshape(-1, 2) - np.asarray(offset)[None, :]) * scale

    def visible(xy: np.ndarray, margin: float) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return (x >= -margin) & (x < width + margin) & (y >= -margin) & (y < height + margin)

    radius = max(2, round(0.3 * pitch))
    for x, y in view(registration.unassigned_xy)[visible(view(registration.unassigned_xy), radius)]:
        cv2.circle(canvas, (round(x), round(y)), radius, OFF_LATTICE_BGR, 1, cv2.LINE_AA)
    if registration.empty_node_ids.size:
        nodes = view(registration.lattice.nodes()[registration.empty_node_ids - 1])
        arm = max(2, round(0.12 * pitch))
        for x, y in nodes[visible(nodes, arm)]:
            cv2.drawMarker(canvas, (round(x), round(y)), EMPTY_BGR, cv2.MARKER_CROSS, 2 * arm, 1)
    table = registration.table
    if every > 1:
        table = table[(table["row"] % every == 0) & (table["col"] % every == 0)]
    font_scale = _font_scale(registration, scale, every)
    thickness = max(1, round(font_scale * 1.5))
    points = view(centres[table["id"]])
    shown = visible(points, pitch * every)
    for mark_id, (x, y) in zip(table["id"][shown].tolist(), points[shown], strict=True):
        text = str(mark_id)
        org = label_origin(text, (x, y), font_scale=font_scale, thickness=thickness, size=(width, height))
        cv2.putText(canvas, text, org, FONT, font_scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(canvas, text, org, FONT, font_scale, TEXT_BGR, thickness, cv2.LINE_AA)
    return canvas


def label_origin(
    text: str, centre: tuple[float, float], *, font_scale: float, thickness: int, size: tuple[int, int]
) -> tuple[int, int]:
    """Where cv2.putText starts ``text`` (bottom left) to centre it on ``centre``, kept inside a canvas of
    ``size`` (width, height) with :data:`LABEL_MARGIN` px to spare where the centre lies in it.

    Centred on a mark at the image's border, an id lost its leading digits beyond the edge (37 read
    as "7" on the real tile_b). A centre outside the canvas (a mark of the next tile, within a
    pitch of this one's edge) is not pulled in, where its label would sit on another mark. The
    black outline, drawn ``thickness + 2`` wide, is what must fit; where the canvas is narrower or
    lower than it, the label's start and top are kept.
    """
    x, y = centre
    (text_w, text_h), _ = cv2.getTextSize(text, FONT, font_scale, thickness)
    left, bottom = round(x - text_w / 2), round(y + text_h / 2)
    width, height = size
    if not (0 <= x < width and 0 <= y < height):
        return left, bottom
    (outline_w, outline_h), baseline = cv2.getTextSize(text, FONT, font_scale, thickness + 2)
    left = max(LABEL_MARGIN, min(left, width - LABEL_MARGIN - outline_w))
    bottom = max(LABEL_MARGIN + outline_h, min(bottom, height - 1 - LABEL_MARGIN - baseline))
    return left, bottom


def _outline(ids: np.ndarray) -> np.ndarray:
    """Pixels of a numbered mark that touch a pixel of another id or the background (4-neighbours)."""
    edge = np.zeros(ids.shape, bool)
    if ids.size == 0:
        return edge
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge &= ids > 0
    return edge


def landmark_step(registration: Registration) -> int:
    """How many grid cells apart the overview labels nodes (1 = every id)."""
    if not needs_tiles(registration):
        return 1
    scale = overview_scale(registration)
    cells = max(registration.rows, registration.cols)
    return next(
        (k for k in range(2, cells + 1) if _text_height(_font_scale(registration, scale, k)) >= MIN_TEXT_PX),
        cells,
    )
