"""Which labelled components touch the edge of their array.

A component on the edge may be the visible part of a mark the tile or image cuts, so its area says
little about a mark's size: every post-processing step that measures marks (the median mark, the
lone marks of the shape cut, the pieces joined as lobes) leaves such components out::

    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    edge = on_edge(stats, mask.shape)          # bool per row of stats (row 0 is the background)
"""

from __future__ import annotations

import cv2
import numpy as np


def on_edge(stats: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Whether each component of ``stats`` (from ``cv2.connectedComponentsWithStats``) touches the
    edge of an array of ``shape``."""
    height, width = shape
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    w, h = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    return (x == 0) | (y == 0) | (x + w == width) | (y + h == height)


__all__ = ["on_edge"]
