"""Test-time augmentation: average the model over the symmetries of the square lattice.

A mark is the same mark turned by 90 degrees or mirrored, but a compact U-Net does not answer
exactly the same on each view. Averaging the probabilities of several views smooths out the
answers that depend on one orientation: on the real samples that removes the false mark on
crop1's out-of-focus blob and lifts crop2's Dice (README, "Model"). It costs one forward
pass per view::

    proba = averaged(model_probabilities, x, "d4")   # x: (N, C, H, W); 8 passes

Modes (:data:`am.messages.TTA_MODES`): ``off`` (1 pass), ``rot180`` (the tile and the tile
turned half a turn: 2 passes, most of what ``d4`` buys; tiles of any shape), ``flips`` (identity,
left-right, up-down and both: 4 passes; tiles of any shape), ``d4`` (the 4 rotations, each plain
and mirrored: 8 passes; square tiles keep one shape, so a compiled model serves all views).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from am.errors import InputError
from am.messages import TTA_MODES

# A view is (quarter turns, mirror left-right), applied to the input in that order.
View = tuple[int, bool]
_VIEWS: dict[str, tuple[View, ...]] = {
    "off": ((0, False),),
    # Of the two-view pairs, the half turn scored best on the tuning set (README, "Test-time augmentation").
    "rot180": ((0, False), (2, False)),
    # Rotating by 180 degrees is flipping both ways; with the mirror that covers all four flips.
    "flips": ((0, False), (0, True), (2, False), (2, True)),
    "d4": tuple((turns, mirror) for turns in range(4) for mirror in (False, True)),
}


def views(mode: str) -> tuple[View, ...]:
    """The views a mode averages; InputError names the valid modes for anything else."""
    if mode not in TTA_MODES:
        raise InputError(f"test-time augmentation {mode!r} is not known: use one of {', '.join(TTA_MODES)}")
    return _VIEWS[mode]


def apply_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """``x`` (..., H, W) turned ``view[0]`` quarter turns, then mirrored left-right if ``view[1]``."""
    turns, mirror = view
    out = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return torch.flip(out, dims=(-1,)) if mirror else out


def undo_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """The inverse of :func:`apply_view`, so each view's probabilities land back on the tile's pixels."""
    turns, mirror = view
    out = torch.flip(x, dims=(-1,)) if mirror else x
    return torch.rot90(out, -turns, dims=(-2, -1)) if turns else out


def averaged(probabilities: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean of ``probabilities`` over the mode's views, each mapped back to ``x``'s orientation.

    ``probabilities`` maps (N, C, H, W) to (N, K, H, W) per-pixel probabilities. Averaging
    probabilities (not logits) keeps one confident view from outvoting the others.
    """
    chosen = views(mode)
    total: torch.Tensor | None = None
    for view in chosen:
        answer = undo_view(probabilities(apply_view(x, view)), view)
        total = answer if total is None else total.add_(answer)
    assert total is not None
    return total.div_(len(chosen)) if len(chosen) > 1 else total


__all__ = ["apply_view", "averaged", "undo_view", "views"]
