"""Which arithmetic a model runs in on a device: precision, casting, and whether to compile.

Workers, ``am.serve``, evaluation and the benchmarks choose alike: the fastest arithmetic that
keeps the masks (fp16 on CUDA, bf16 only on CPUs that multiply it in hardware, fp32 elsewhere),
so a figure measured by one holds for the others.
"""

from __future__ import annotations

import logging
import os

import torch

from am.cli import COMPILE_MODES, PRECISIONS
from am.errors import InputError

log = logging.getLogger(__name__)


def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has AMX tile units, the only CPUs where bf16 inference beats float32.

    Measured with the shipped model on one Xeon, oneDNN held to each instruction set with
    ``ONEDNN_MAX_CPU_ISA`` (ms per 512 px tile, 2 threads, float32 -> bf16): AMX 69 -> 41,
    AVX512-BF16 alone 70 -> 86, AVX512 67 -> 187, AVX2 82 -> 950. So only AMX counts, and a
    ``ONEDNN_MAX_CPU_ISA`` that leaves AMX out is obeyed.
    """
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if limit and limit not in ("ALL", "DEFAULT") and "AMX" not in limit:
        return False
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe is not None and probe())


def resolve_precision(precision: str, device: str, *, warn: bool = True) -> str:
    """``auto`` is fp16 on CUDA, and on a CPU bf16 where it has AMX and fp32 elsewhere.

    fp16 is refused off CUDA; bf16 asked for on a CPU without AMX is allowed but warned about,
    since it runs several times slower than fp32 there.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    is_cuda = torch.device(device).type == "cuda"
    if precision == "auto":
        if is_cuda:
            return "fp16"
        return "bf16" if cpu_multiplies_bf16() else "fp32"
    if precision == "fp16" and not is_cuda:
        raise InputError(f"precision fp16 needs a CUDA device, not {device}; use fp32 (or bf16) on CPU")
    if warn and precision == "bf16" and not is_cuda and not cpu_multiplies_bf16():
        log.warning("bf16 on a CPU without AMX tile units is emulated and runs slower than fp32; "
                    "use precision auto or fp32 there")
    return precision


def cast_for_inference(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` (converted in place) with its weights in ``dtype``, batch-norm layers kept in float32 under fp16.

    A running variance beyond fp16's largest value (65504; the shipped model's reaches 56576)
    would become inf and silence its channel, the very thing checkpoints store these statistics
    in float32 to avoid. cuDNN and torch's own kernels take fp16 input with float32 batch-norm
    parameters and return fp16, so nothing else changes. bf16 has float32's range and keeps the cast.
    """
    if dtype == torch.float32:
        return model
    kept = {}
    if dtype == torch.float16:  # taken before the cast, which would already have turned them to inf
        kept = {name: {key: value.detach().clone() for key, value in module.state_dict().items()}
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)}
    model = model.to(dtype)
    for name, state in kept.items():
        norm = model.get_submodule(name).float()
        norm.load_state_dict(state)
    return model


def resolve_compile(mode: str, device: str) -> bool:
    """``auto`` compiles on CUDA only: on a CPU the compile costs more than a typical job gains."""
    if mode not in COMPILE_MODES:
        raise InputError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")
