"""Widen a trained U-Net's decoder without changing what it computes.

Stages trained afresh throw away what the old ones learnt, and on two CPU cores the run never
wins it back (a decoder widened that way scored Dice 0.904 where its start scored 0.912). Here
every trained tensor goes into its old place in the wider one, the new channels keep the fresh
model's random weights, and every weight that carries a new channel into an old channel (or into
the head) is zero. The widened model's output is then exactly the trained one's, and training
grows the new channels from there (the zero links get gradients from the first step)::

    model = build_model(replace(meta, decoder_channels=(128, 64, 32, 32, 16)))
    widen_decoder(model, trained_state, trained_meta.decoder_channels)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

DECODER = "decoder.blocks."
HEAD = "segmentation_head."


def can_widen(old: Sequence[int], new: Sequence[int]) -> bool:
    """Whether ``new`` decoder widths are ``old`` ones with no stage narrower (and as many stages)."""
    return len(old) == len(new) and all(n >= o for o, n in zip(old, new, strict=True))


def widen_decoder(model: torch.nn.Module, state: Mapping[str, torch.Tensor], old_widths: Sequence[int]) -> None:
    """Load ``state`` (a U-Net with decoder ``old_widths``) into the wider ``model``, preserving its function.

    ``model`` is an smp U-Net freshly built with the same encoder and wider decoder stages; its
    new channels keep their random initialisation. Raises ``ValueError`` when a stage is narrower.
    """
    new_widths = [block.conv2[0].out_channels for block in model.decoder.blocks]
    old_widths = [int(w) for w in old_widths]
    if not can_widen(old_widths, new_widths):
        raise ValueError(f"decoder {new_widths} is not a widening of {old_widths}")
    skips = _skip_channels(model, new_widths)
    target = model.state_dict()
    with torch.no_grad():
        for name, fresh in target.items():
            old = state[name].to(fresh.dtype)
            if name.startswith(DECODER):
                block = int(name[len(DECODER):].split(".", 1)[0])
                conv = name[len(DECODER):].split(".")[1]
                _embed_decoder_tensor(fresh, old, conv=conv, width=old_widths[block],
                                      inputs=_input_map(block, old_widths, new_widths, skips))
            elif name.startswith(HEAD) and fresh.ndim == 4:
                fresh.zero_()
                fresh[:, : old.shape[1]] = old
            else:
                if fresh.shape != old.shape:
                    raise ValueError(f"{name}: {tuple(old.shape)} does not fit {tuple(fresh.shape)}")
                fresh.copy_(old)
    model.load_state_dict(target)


def _skip_channels(model: torch.nn.Module, widths: list[int]) -> list[int]:
    """Channels each decoder stage concatenates from the encoder (0 for the last, full-size stage)."""
    first_inputs = [block.conv1[0].in_channels for block in model.decoder.blocks]
    head = int(model.encoder.out_channels[-1])
    return [first_inputs[0] - head] + [first_inputs[i] - widths[i - 1] for i in range(1, len(widths))]


def _input_map(block: int, old: list[int], new: list[int], skips: list[int]) -> tuple[list[int], list[int]]:
    """Where each old input channel of a stage's first conv sits now, and which inputs are new.

    A stage's input is the previous stage's output followed by the encoder's skip features, so
    widening the previous stage moves the skip channels up.
    """
    if block == 0:
        return [], []  # the encoder's output feeds the first stage unchanged
    before, now = old[block - 1], new[block - 1]
    return (list(range(before)) + [now + j for j in range(skips[block])], list(range(before, now)))


def _embed_decoder_tensor(fresh: torch.Tensor, old: torch.Tensor, *, conv: str, width: int,
                          inputs: tuple[list[int], list[int]]) -> None:
    if conv not in ("conv1", "conv2"):
        raise ValueError(f"decoder part {conv!r} is not a convolution this widening knows (attention?)")
    if fresh.ndim == 0:  # num_batches_tracked
        fresh.copy_(old)
    elif fresh.ndim == 1:  # batch norm of the stage's conv: old channels first
        fresh[:width] = old
    elif conv == "conv1":
        moved, added = inputs
        if not moved:
            fresh[:width] = old
        else:
            fresh[:width, moved] = old
            fresh[:width, added] = 0.0
    else:  # conv2 reads conv1's outputs: old ones where they were, new ones not at all
        fresh[:width, :width] = old
        fresh[:width, width:] = 0.0
