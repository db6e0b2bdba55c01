"""Where a tile shows no picture: wide areas of one grey level, on which the model's output means nothing.

Zero fill around a stitched mosaic or a rotated scan is flat over thousands of pixels. The model
has never seen such areas and answers them with its biases and its padding: bands and blobs of
"marks" along the fill's borders and across it. Marks can be flat too: after the percentile
stretch, bright marks clip to white, and a chain of abutting clipped marks is one flat region of
many thousand pixels. What no mark holds is a wide square of one grey level: the largest marks
(radius 0.5 of an 85 px pitch) cannot hold :data:`FLAT_SIDE` x :data:`FLAT_SIDE`, nor can two
marks that only touch. So a pixel is blank where some such square around it is all one level::

    blank = flat_areas(tiles)          # bool (N, H, W)
    proba[blank] = 0
"""

from __future__ import annotations

import cv2
import numpy as np

# The side (model pixels) of a square of one grey level that no mark can hold: its half-diagonal
# (45 px) exceeds the largest mark's radius (42 px).
FLAT_SIDE = 64
_SQUARE = np.ones((FLAT_SIDE, FLAT_SIDE), np.uint8)


def flat_areas(tiles: np.ndarray) -> np.ndarray:
    """Pixels (bool, the shape of ``tiles``: (H, W) or (N, H, W)) covered by a flat square of side :data:`FLAT_SIDE`.

    Every pixel of the fill is blank, those beside the picture included, as long as the fill is
    at least that wide there.
    """
    if tiles.ndim == 2:
        return _flat_areas_2d(tiles)
    return np.stack([_flat_areas_2d(tile) for tile in tiles]) if len(tiles) else np.zeros(tiles.shape, bool)


def _flat_areas_2d(tile: np.ndarray) -> np.ndarray:
    if min(tile.shape) < FLAT_SIDE:
        return np.zeros(tile.shape, bool)
    # The square anchored at each pixel is flat where its lowest and highest values agree; the
    # anchor (0, 0) makes the square the pixel's lower-right one, inside the tile or not at all.
    low = cv2.erode(tile, _SQUARE, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    high = cv2.dilate(tile, _SQUARE, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT, borderValue=255)
    corners = (low == high).view(np.uint8)
    if not corners.any():
        return np.zeros(tile.shape, bool)
    # Back from the squares' corners to every pixel the squares cover.
    return cv2.dilate(corners, _SQUARE, anchor=(FLAT_SIDE - 1, FLAT_SIDE - 1),
                      borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


__all__ = ["FLAT_SIDE", "flat_areas"]
