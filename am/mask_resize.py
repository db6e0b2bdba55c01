"""Shrinking a stitched mask to the image's own size without joining the marks the model cut apart.

The model parts touching marks by a line of background about one pixel wide at the tiles' scale
(:mod:`am.model.separate`). A mask made at ``--scale F`` with F > 1 is shrunk by F on its way back
to the image's size, and a linear resize averages that line with the marks on both sides of it
((0 + 255) / 2 passes the cut at half way), or, past F = 2, steps over it altogether: the line is
gone and two marks become one component, counted as one mark and given the pixels of two.

:func:`shrink_apart` resizes as before and then takes each foreground pixel of the result back to
the mark of the tile-scale mask it was drawn from (its anchor: the nearest foreground pixel of the
two by two the linear resize read). Of each two 8-adjacent foreground pixels drawn from different
marks the fainter one goes (both on a tie), as :func:`am.model.separate.part_regions` draws its
lines: no two marks that are apart at the tiles' scale stay 8-connected, and outlines move only
where two marks come within a pixel of each other, by at most that pixel.

It runs in blocks of rows: the tile-scale marks are labelled in the rows a block reads and
``margin`` rows either side, so no temporary grows with the whole mask (a 40000 px mask is 1.6 GB
in uint8, and its int32 labels would be 6.4 GB). Two pixels of one mark joined only by a path
leaving that window count as two marks: they are kept apart, never joined.
"""

from __future__ import annotations

import cv2
import numpy as np

# Tile-scale rows labelled above and below the rows a block reads; far taller than a mark.
MARGIN_ROWS = 128
# About this many tile-scale pixels are labelled per block (int32 labels: 4 bytes each).
BLOCK_PIXELS = 1 << 23
# Pixels above this value are foreground, as at_source_size cuts the resized mask.
CUT = 127


def shrink_apart(mask: np.ndarray, height: int, width: int, *, margin: int = MARGIN_ROWS,
                 block_pixels: int = BLOCK_PIXELS) -> np.ndarray:
    """``mask`` (uint8, 0/255) resized linearly to ``height`` x ``width`` and cut at half way, as a
    0/255 uint8 mask in which no two marks (8-connected components) of ``mask`` touch."""
    big_h, big_w = mask.shape
    values = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
    near_y, other_y = _support(height, big_h)
    near_x, other_x = _support(width, big_w)
    rows = max(1, (block_pixels // max(1, big_w)) * height // big_h)
    above = None  # the row above the block as the resize gave it, before the block above cut it
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        first, last = max(0, top - 1), min(height, bottom + 1)  # one row more each side: its pairs
        tile_top = max(0, int(min(near_y[first], other_y[first])) - margin)
        tile_bottom = min(big_h, int(max(near_y[last - 1], other_y[last - 1])) + 1 + margin)
        _, labels = cv2.connectedComponents((mask[tile_top:tile_bottom] > CUT).view(np.uint8),
                                            connectivity=8, ltype=cv2.CV_32S)
        ys = (near_y[first:last] - tile_top, other_y[first:last] - tile_top)
        block = values[first:last].copy()
        if above is not None:
            block[0] = above
        fg = block > CUT
        anchors = _anchors(labels, ys, (near_x, other_x), fg)
        del labels
        drop = _fainter_of_pairs(block, fg, anchors)
        above = values[bottom - 1].copy()
        values[top:bottom][drop[top - first : bottom - first]] = 0
    cv2.threshold(values, CUT, 255, cv2.THRESH_BINARY, dst=values)
    return values


def _support(size: int, big: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``size`` output pixels along one axis, the source pixel a linear resize from
    ``big`` weighs most and the other one it reads (int32), with OpenCV's pixel-centre mapping."""
    centre = (np.arange(size, dtype=np.float64) + 0.5) * (big / size) - 0.5
    low = np.floor(centre)
    frac = centre - low
    low = np.clip(low, 0, big - 1).astype(np.int32)
    high = np.minimum(low + 1, big - 1)
    frac[centre < 0] = 0.0
    upper = frac >= 0.5
    return np.where(upper, high, low), np.where(upper, low, high)


def _anchors(labels: np.ndarray, ys: tuple[np.ndarray, np.ndarray], xs: tuple[np.ndarray, np.ndarray],
             fg: np.ndarray) -> np.ndarray:
    """The label of the nearest foreground pixel of the two by two each foreground output pixel
    (``fg``) is drawn from (0 where none is foreground, and where ``fg`` is not)."""
    out = labels.take(ys[0], axis=0).take(xs[0], axis=1)
    rows, cols = np.nonzero(fg & (out == 0))  # background there: the next nearest, point by point
    for y, x in ((ys[0], xs[1]), (ys[1], xs[0]), (ys[1], xs[1])):
        found = labels[y[rows], x[cols]]
        out[rows, cols] = found
        rows, cols = rows[found == 0], cols[found == 0]
    return out


def _fainter_of_pairs(values: np.ndarray, fg: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Which pixels go (bool): of each 8-adjacent pair of foreground (``fg``) pixels with different
    anchors, the one with the lower value, both on a tie."""
    drop = np.zeros(values.shape, dtype=bool)
    height, width = values.shape
    # Each pair is seen once: right, down, down-right and down-left of every pixel.
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = (slice(0, height - dy), slice(max(0, -dx), width - max(0, dx)))
        b = (slice(dy, height), slice(max(0, dx), width - max(0, -dx)))
        meet = fg[a] & fg[b] & (anchors[a] != anchors[b])
        if not meet.any():
            continue
        va, vb = values[a], values[b]
        drop[a] |= meet & (va <= vb)
        drop[b] |= meet & (vb <= va)
    return drop


__all__ = ["shrink_apart"]
