"""The real microscopy samples, kept beside the repository (``../shared/data/real``), not in it.

    image = read_image(real_sample("tile_b_512.png"))

A test that needs one is skipped, saying where the samples were looked for, when they are absent.
The ``real_data`` fixture of tests/conftest.py gives the folder itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def real_samples() -> Path:
    """The samples' folder; skips the calling test when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real microscopy samples not found at {REAL_DATA} (they live beside the repository)")
    return REAL_DATA


def real_sample(name: str) -> Path:
    """The path of the sample file ``name``; skips the calling test when it is absent."""
    path = real_samples() / name
    if not path.is_file():
        pytest.skip(f"real sample {name} not found in {REAL_DATA}")
    return path
