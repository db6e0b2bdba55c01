"""Where a tile shows no picture: a large area of one grey level, on which the model's output means nothing.

Zero fill around a stitched mosaic or a rotated scan, and glare clipped to white, are flat over
thousands of pixels. The model has never seen such areas and answers them with its biases and its
padding: bands and blobs of "marks" along the fill's borders and across it. A mark always shows
edges and texture, and even a mark clipped to white at its centre is far smaller than
:data:`MIN_FLAT_PX`, so nothing a mark could be is lost by blanking these areas::

    blank = flat_areas(tiles)          # bool (N, H, W)
    proba[blank] = 0
"""

from __future__ import annotations

import cv2
import numpy as np

# A connected area of one grey level at least this large (64 x 64 model pixels) holds no mark: the
# largest marks at the training scale (radius 27 px at pitch 60 px) cover about 2300 px, with edges.
MIN_FLAT_PX = 4096
_NEIGHBOURS = np.ones((3, 3), np.uint8)


def flat_areas(tiles: np.ndarray, *, min_px: int = MIN_FLAT_PX) -> np.ndarray:
    """Pixels (bool, the shape of ``tiles``: (H, W) or (N, H, W)) in areas of one grey level of ``min_px`` or more.

    A pixel is flat where its 8 neighbours share its value; flat pixels form areas by
    4-connectivity, and an area large enough is blank together with the pixels beside it that
    share its value (the fill's own border, which no flat pixel's test covers).
    """
    if tiles.ndim == 2:
        return _flat_areas_2d(tiles, min_px)
    return np.stack([_flat_areas_2d(tile, min_px) for tile in tiles]) if len(tiles) else np.zeros(tiles.shape, bool)


def _flat_areas_2d(tile: np.ndarray, min_px: int) -> np.ndarray:
    same = cv2.erode(tile, _NEIGHBOURS) == cv2.dilate(tile, _NEIGHBOURS)
    if np.count_nonzero(same) < min_px:
        return np.zeros(tile.shape, bool)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(same.view(np.uint8), connectivity=4)
    large = stats[:, cv2.CC_STAT_AREA] >= min_px
    large[0] = False
    if not large[1:].any():
        return np.zeros(tile.shape, bool)
    area = large[labels]
    # The pixels beside an area are flat-valued too (every neighbour of a flat pixel shares its value).
    return cv2.dilate(area.view(np.uint8), _NEIGHBOURS) > 0


__all__ = ["MIN_FLAT_PX", "flat_areas"]
