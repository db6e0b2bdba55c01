"""A small scene for the tests of images smaller than a tile: marks on a lattice, and one mark cut by the
image's bottom edge, which post-processing must keep."""

from __future__ import annotations

import numpy as np


def scene(height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """Dark textured tissue with disks of radius 10 on a 40 px lattice, and one disk cut by the bottom
    edge (its centre 7 px below it, 3 rows visible) at column 300."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 90, (height, width)).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for cy in range(30, height - 20, 40):
        for cx in range(30, width - 20, 40):
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2] = 250
    image[(yy - (height + 7)) ** 2 + (xx - 300) ** 2 <= 10**2] = 250
    return image
