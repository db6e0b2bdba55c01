"""How a checkpoint stores its weights: fp32, fp16 (half the file) or int8 (about a quarter).

The shipped default may weigh at most 15 MB. In fp16 that is about 7 M parameters, and every encoder
that small is of the shipped one's class; in int8 it is about 14 M, which lets resnet18-sized
encoders (within the CPU's 250 ms a tile) ship too (docs/model.md, "Which encoders the CPU default
can have"). Only convolution and linear weights (tensors of two or more dimensions, nearly all of a
U-Net's parameters) become int8, each output channel with a scale of its own, symmetric around
zero: a filter's weights keep their own range, which matters for depthwise convolutions whose
channels differ by orders of magnitude. Biases and BatchNorm tensors, few and sensitive, stay as
fp16 stores them. On the shipped weights the held-out figures do not move beyond the images' spread
(docs/model.md). Loading always gives float32 back::

    stored, scales = pack(model.state_dict(), "int8")
    state = unpack(stored, scales, name="model.pt")     # float32, ready for load_state_dict
"""

from __future__ import annotations

import torch

from am.errors import CheckpointError

STORAGES = ("fp32", "fp16", "int8")
# Buffers kept in fp32 in a half-precision file: BatchNorm statistics, few and of large range.
FP32_SUFFIXES = ("running_mean", "running_var")
INT8_LEVELS = 127  # symmetric: -127..127, so zero is exact and the range is the same on both sides


def pack(state: dict[str, torch.Tensor], storage: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The tensors to store for ``state`` in ``storage``, and the per-channel scales of those stored as int8.

    In fp16 and int8 BatchNorm statistics stay fp32, and so does any tensor fp16 cannot hold: a running
    variance beyond fp16's 65504 (the shipped model's reaches 56576) would come back as inf and
    silence its channel. Integer buffers (BatchNorm's counters) are stored as they are.
    """
    if storage not in STORAGES:
        raise ValueError(f"weight storage {storage!r} is not one of {', '.join(STORAGES)}")
    stored: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        if storage == "int8" and _quantizable(key, tensor):
            stored[key], scales[key] = quantize(tensor)
        elif storage != "fp32" and tensor.is_floating_point() and not key.endswith(FP32_SUFFIXES):
            halved = tensor.half()
            stored[key] = halved if torch.isfinite(halved).all() else tensor
        else:
            stored[key] = tensor
        stored[key] = stored[key].contiguous().clone()
    return stored, scales


def unpack(stored: dict[str, torch.Tensor], scales: dict[str, torch.Tensor], *, name: str) -> dict[str, torch.Tensor]:
    """A float32 state dict from stored tensors; ``name`` (the file) is what an error names."""
    unknown = sorted(set(scales) - set(stored))
    if unknown:
        raise CheckpointError(f"{name} holds int8 scales for {len(unknown)} tensor(s) it does not store "
                              f"(e.g. {unknown[0]}): the file is damaged; train or export it again")
    state = {}
    for key, tensor in stored.items():
        if key in scales:
            state[key] = dequantize(tensor, scales[key], key=key, name=name)
        elif tensor.dtype == torch.int8:
            raise CheckpointError(f"{name} stores {key} as int8 without a scale: the file is damaged; "
                                  "train or export it again")
        else:
            state[key] = tensor.float() if tensor.is_floating_point() else tensor
    return state


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 levels and a float32 scale per output channel (dimension 0); ``levels * scale`` is the weight.

    An all-zero channel gets scale 1, so that no scale is zero and its zeros come back exactly.
    """
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    peak = flat.abs().amax(dim=1)
    scale = torch.where(peak > 0, peak / INT8_LEVELS, torch.ones_like(peak))
    levels = torch.round(flat / scale[:, None]).clamp(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return levels.reshape(weight.shape), scale


def dequantize(levels: torch.Tensor, scale: torch.Tensor, *, key: str, name: str) -> torch.Tensor:
    """The float32 weight back; a scale that does not fit its tensor is a damaged file, named as such."""
    if levels.dtype != torch.int8 or levels.ndim < 2 or not scale.is_floating_point() \
            or tuple(scale.shape) != (levels.shape[0],) or not bool(torch.isfinite(scale).all() and (scale > 0).all()):
        raise CheckpointError(f"{name}: {key} is not stored as int8 with one positive scale per output channel "
                              f"({levels.dtype} {tuple(levels.shape)}, scale {scale.dtype} {tuple(scale.shape)}): "
                              "the file is damaged; train or export it again")
    shape = (-1,) + (1,) * (levels.ndim - 1)
    return levels.float() * scale.float().reshape(shape)


def _quantizable(key: str, tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.ndim >= 2 and not key.endswith(FP32_SUFFIXES)


__all__ = ["FP32_SUFFIXES", "STORAGES", "dequantize", "pack", "quantize", "unpack"]
