"""A resume state's parts for the tests that save one: a model's optimizer, schedule and scaler, as a run holds them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from am.train.runfiles import save_state


def state_saver(path: Path, model: torch.nn.Module) -> Callable[[int], None]:
    """Saves the state of ``model`` (with a fresh AdamW, constant schedule and disabled scaler) to ``path``
    after the epoch given, the same objects each time, as a run saves after each epoch."""
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return lambda epoch: save_state(path, model, optimizer, scheduler, scaler, epoch=epoch)
