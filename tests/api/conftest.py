"""Fixtures for the HTTP servers' tests."""

from __future__ import annotations

import numpy as np
import pytest
from faults.harness import lattice_image

from .servers import png_bytes


@pytest.fixture(scope="session")
def lattice() -> np.ndarray:
    # 2 x 2 tiles of the test model's 128 px at this size.
    return lattice_image(150, 190, pitch=30, radius=7, seed=3)


@pytest.fixture(scope="session")
def lattice_png(lattice) -> bytes:
    return png_bytes(lattice)
