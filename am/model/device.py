"""Which torch device a command runs on, checked before any work is done.

A misspelled device, or ``cuda`` on a machine where torch finds no GPU, would otherwise surface
as a torch traceback only once the model first moves, after minutes of reading or rendering
images. Every command that takes a device checks it here first::

    device = resolve_device(args.device)      # "" or None: cuda when available, else cpu
    problem = device_problem("gpu")           # a sentence saying what is wrong and what to do
"""

from __future__ import annotations

import torch

from am.errors import InputError

DEVICE_TYPES = ("cpu", "cuda")


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used on this machine, with what to do instead; None when it can."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return f"not a device name; use cpu or cuda (cuda:N for the N-th GPU), not {device!r}"
    if parsed.type not in DEVICE_TYPES:
        return f"{parsed.type} devices are not supported; use cpu or cuda"
    if parsed.type == "cpu":
        return None
    if not torch.cuda.is_available():
        return ("torch finds no CUDA device on this machine (no NVIDIA GPU or driver, or a torch built without "
                "CUDA); use cpu here, or run on a machine with a GPU")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        return f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; use one of those"
    return None


def resolve_device(device: str | None) -> torch.device:
    """The device to run on: ``device`` as given, or (None or empty) cuda when available, else cpu.

    Raises InputError naming the value and what to do when it cannot be used here.
    """
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = device_problem(device)
    if problem is not None:
        raise InputError(f"device {device!r}: {problem}")
    return torch.device(device)


__all__ = ["DEVICE_TYPES", "device_problem", "resolve_device"]
