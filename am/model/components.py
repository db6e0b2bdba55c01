"""A mask's labelled components, shared by the post-processing steps, and which touch the edge.

Labelling a 512 px tile costs as much as most of a step, and most steps leave most tiles exactly as
they are (returning the very array they were given), so :func:`label` passes a labelling on to the
next step while its mask is unchanged rather than labelling the tile again.

A component on the edge may be the visible part of a mark the tile or image cuts, so its area says
little about a mark's size: every post-processing step that measures marks (the median mark, the
lone marks of the shape cut, the pieces joined as lobes) leaves such components out::

    components = label(mask)
    edge = on_edge(components.stats, mask.shape)   # bool per row of stats (row 0 is the background)
    mask = some_step(mask, components=components.parts)
    components = label(mask, known=components)     # labelled again only where the step changed it
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from am.errors import InputError


class Components(NamedTuple):
    """``mask``'s 8-connected components as ``cv2.connectedComponentsWithStats`` gives them."""

    mask: np.ndarray
    labels: np.ndarray
    stats: np.ndarray
    centroids: np.ndarray

    @property
    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(labels, stats, centroids)``, the form the steps take them in."""
        return self.labels, self.stats, self.centroids


def label(mask: np.ndarray, *, known: Components | None = None) -> Components:
    """The components of bool ``mask``: ``known`` itself where it was read from this very array (a
    step that changes a mask returns a new one, so identity means unchanged)."""
    if known is not None and known.mask is mask:
        return known
    _, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    return Components(mask, labels, stats, centroids)


def parts_of(mask: np.ndarray,
             components: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mask``'s labels, stats and centroids: ``components`` where a step's caller passed them (of
    ``mask``'s shape, or the step would cut by another tile's labels), else labelled now."""
    if components is None:
        return label(mask).parts
    if components[0].shape != mask.shape:
        raise InputError(f"labels {components[0].shape} and mask {mask.shape} must have one shape")
    return components


def on_edge(stats: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Whether each component of ``stats`` (from ``cv2.connectedComponentsWithStats``) touches the
    edge of an array of ``shape``."""
    height, width = shape
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    w, h = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    return (x == 0) | (y == 0) | (x + w == width) | (y + h == height)


__all__ = ["Components", "label", "on_edge", "parts_of"]
