"""The acquisition grid's shape as a user gives it (``--rows/--cols``), checked before any work.

Its own small module so that a command can refuse a mistyped shape at once, before it imports
registration (scipy and friends take seconds, during which a Ctrl-C would end in a traceback).
"""

from __future__ import annotations

import numpy as np

# Ids are stored in a 16-bit image with 0 for the background.
MAX_NODES = 65535
# Fewer marks than this cannot define a lattice with any confidence (am.register.fit fits one to
# them): a grid of fewer positions can never be registered. Here, not in am.register.fit, so that a
# command refuses such a grid before it imports registration or segments a single tile.
MIN_MARKS = 4
SPLIT_LARGE_GRIDS = ("crop the image into parts of at most that many positions, each its own group "
                     "(source/<group>/), and register each with its own --rows/--cols")


def grid_shape_error(rows: int | None, cols: int | None, *, prefix: str = "",
                     split_advice: str = SPLIT_LARGE_GRIDS) -> str | None:
    """Why ``rows`` x ``cols`` cannot be a grid's shape, or None. Commands ask before they touch any
    file (``prefix="--"`` names their options), so a mistyped shape costs no earlier output, and a
    grid registration could never fit (under :data:`MIN_MARKS` positions) no segmentation first."""
    for name, value in (("rows", rows), ("cols", cols)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            return f"{prefix}{name} must be a positive whole number of grid positions, got {value!r}"
    if rows is not None and cols is not None and rows * cols < MIN_MARKS:
        return (f"a {rows} x {cols} grid has {rows * cols} position(s), but registration fits the grid to at least "
                f"{MIN_MARKS} marks: give the acquisition's own {prefix}rows and {prefix}cols (at least {MIN_MARKS} "
                "positions in all)")
    if rows is not None and cols is not None and rows * cols > MAX_NODES:
        return (f"a {rows} x {cols} grid has more than {MAX_NODES} positions, the most a 16-bit id image can "
                f"number; {split_advice}")
    return None
