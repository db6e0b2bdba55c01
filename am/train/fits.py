"""Whether a training step fits in this machine's memory, asked before any data is read.

A ``--batch-size`` or ``--crop`` far too large for the machine is not an error torch reports
well: on a CPU the kernel's out-of-memory killer ends the run (SIGKILL, no message) after minutes
of reading and rendering images, on a GPU an OutOfMemoryError traceback comes at the first step.

A step's memory is dominated by the activations it keeps for the backward pass. They are counted
by one forward pass on the meta device (shapes only: no memory, no compute, well under a second)
as the sum of every leaf module's output, or, for an architecture the meta device cannot run, by
passes on small crops on the CPU; the weights, their gradients and AdamW's two moments add four
copies of the parameters. On the shipped architecture on a CPU the measured peak was 0.90-1.04 of
that count (some activations are computed in place, a few buffers are not counted), so a run is
refused only where :data:`SURE_FRACTION` of it already exceeds the memory free: a refusal is
certain, a pass is not a promise.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from am.model.checkpoint import ModelMeta

log = logging.getLogger(__name__)

# The share of the counted memory a step certainly needs (measured 0.90-1.04, see above).
SURE_FRACTION = 0.75
# Weights, gradients and AdamW's two moments, each the size of the parameters.
PARAMETER_COPIES = 4
GIB = 2**30


@dataclass(frozen=True)
class StepMemory:
    """What one training step holds: ``per_crop`` bytes of activations for each crop of a batch, plus
    ``fixed`` bytes (the parameters' copies)."""

    per_crop: int
    fixed: int

    def total(self, batch_size: int) -> int:
        return self.fixed + batch_size * self.per_crop


def step_memory(meta: ModelMeta, crop: int, *, bytes_per_value: int = 4) -> StepMemory:
    """Count the memory of a training step on ``crop`` x ``crop`` px crops (see the module's note).

    ``bytes_per_value``: 4 for float32 training, 2 where mixed precision keeps activations in 16 bits.
    Where an architecture cannot run on the meta device (mit_b0 reads a tensor's value in its forward
    pass), the count is taken on the CPU instead (:func:`_count_on_cpu`).
    """
    try:
        values, parameters = _count(meta, crop, torch.device("meta"))
    except Exception as exc:  # any operation the meta device lacks; the CPU count below says what the model needs
        log.debug("%s cannot run on the meta device (%s: %s): counting its activations on the CPU", meta.encoder,
                  type(exc).__name__, exc)
        values, parameters = _count_on_cpu(meta, crop)
    return StepMemory(per_crop=values * bytes_per_value, fixed=PARAMETER_COPIES * 4 * parameters)


# The sides of the crops an architecture that cannot run on the meta device is counted on, in px.
CPU_COUNT_SIDES = (64, 128)


def _count_on_cpu(meta: ModelMeta, crop: int) -> tuple[int, int]:
    """Activations and parameters of one ``crop`` px crop, counted on the CPU on crops of at most 128 px.

    The crop itself could need more memory than the machine has, which is what the count is to tell,
    so larger crops are extrapolated: activations are ``a * area + b * area**2`` (convolutions grow
    with the area, attention maps such as SegFormer's with its square), fitted to the counts at
    :data:`CPU_COUNT_SIDES`. ``b`` is never taken below 0: small crops' padded borders make a convolution
    network's values per pixel fall slightly with the area, and a negative square would extrapolate
    that into far too small a count.
    """
    if crop <= CPU_COUNT_SIDES[-1]:
        return _count(meta, crop, torch.device("cpu"))
    (small, parameters), (large, _) = (_count(meta, side, torch.device("cpu")) for side in CPU_COUNT_SIDES)
    area_small, area_large, area = (side * side for side in (*CPU_COUNT_SIDES, crop))
    square = max(0.0, (large / area_large - small / area_small) / (area_large - area_small))
    linear = large / area_large - square * area_large
    return int(round(linear * area + square * area * area)), parameters


def _count(meta: ModelMeta, crop: int, device: torch.device) -> tuple[int, int]:
    """The values of every leaf module's output in one forward pass of a ``crop`` px crop on ``device``,
    and the model's parameters."""
    from am.model.build import build_model

    values = 0

    def count(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        nonlocal values
        if isinstance(output, torch.Tensor):
            values += output.numel()

    with torch.device(device), torch.no_grad():
        model = build_model(meta).train()
        for module in model.modules():
            if not any(True for _ in module.children()):
                module.register_forward_hook(count)
        model(torch.zeros(1, meta.in_channels, crop, crop))
    return values, sum(p.numel() for p in model.parameters())


def free_memory(device: torch.device) -> int | None:
    """Bytes free for a new run on ``device``: the GPU's free memory, or on a CPU the kernel's
    MemAvailable (capped by a container's cgroup limit); None where it cannot be told."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    available = _meminfo_available()
    limit = _cgroup_room()
    if available is None:
        return limit
    return available if limit is None else min(available, limit)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit leaves (a container's limit is not in /proc/meminfo)."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def step_memory_problem(meta: ModelMeta, *, batch_size: int, crop: int, device: torch.device,
                        what: str = "training") -> str | None:
    """Why a step of ``batch_size`` crops of ``crop`` px cannot fit in ``device``'s free memory, with the
    largest batch that might; None where it may fit (or the free memory cannot be told)."""
    free = free_memory(device)
    if free is None:
        log.debug("free memory of %s unknown: the batch size is not checked", device)
        return None
    try:
        need = step_memory(meta, crop, bytes_per_value=2 if device.type == "cuda" else 4)
    except Exception as exc:  # the model runs nowhere here; training says why, and a check must not stop it first
        log.warning("the memory a step of %s takes could not be counted (%s: %s): --batch-size %d and --crop %d "
                    "are not checked against the %.1f GiB free; a step that does not fit ends the run when it "
                    "starts", meta.encoder, type(exc).__name__, exc, batch_size, crop, free / GIB)
        return None
    if SURE_FRACTION * need.total(batch_size) <= free:
        return None
    room = free - need.fixed  # the advice counts in full: a batch at the refusal's edge would still not fit
    largest = int(room // need.per_crop) if room > 0 else 0
    advice = (f"give --batch-size {largest} or less, or a smaller --crop" if largest >= 1
              else "even one crop does not fit: give a smaller --crop")
    where = "GPU" if device.type == "cuda" else "machine"
    return (f"{what} with --batch-size {batch_size} and --crop {crop} needs about "
            f"{need.total(batch_size) / GIB:.1f} GiB of memory ({need.per_crop / 2**20:.0f} MiB per crop), and this "
            f"{where} has {free / GIB:.1f} GiB free; {advice}")
