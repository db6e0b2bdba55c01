"""The progress bar over one epoch's training steps, shared by the commands that train a model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def step_bar(iterable: Iterable[T], total: int, desc: str) -> Iterable[T]:
    """Steps of one epoch, redrawn at most every 2 s (a log file gets few lines) and cleared when it ends."""
    return tqdm(iterable, total=total, desc=desc, unit="step", leave=False, mininterval=2.0)


__all__ = ["step_bar"]
