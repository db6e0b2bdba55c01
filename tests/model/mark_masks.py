"""A labelled mask for the tests of how masks are read: marks well apart, a small share of the pixels."""

from __future__ import annotations

import numpy as np


def square_marks() -> np.ndarray:
    """A 0/1 mask of 12 separate square marks, a small share of its pixels."""
    marks = np.zeros((96, 128), np.uint8)
    for i in range(12):
        y, x = 8 + 30 * (i // 4), 6 + 31 * (i % 4)
        marks[y:y + 12, x:x + 14] = 1
    return marks
