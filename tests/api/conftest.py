"""Fixtures for the HTTP servers' tests."""

from __future__ import annotations

import numpy as np
import pytest

from .servers import lattice_image, png_bytes


@pytest.fixture(scope="session")
def lattice() -> np.ndarray:
    return lattice_image(seed=3)


@pytest.fixture(scope="session")
def lattice_png(lattice) -> bytes:
    return png_bytes(lattice)
