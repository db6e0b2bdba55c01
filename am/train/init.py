"""Starting a run from another checkpoint's weights, also where the new model is wider or refined."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from am.errors import InputError
from am.model.checkpoint import ModelMeta, load_checkpoint
from am.model.refine import grow_refinement
from am.model.widen import can_widen, widen_decoder

log = logging.getLogger(__name__)


def check_init(meta: ModelMeta, path: Path, *, partial: bool = False) -> None:
    """Raise InputError (or CheckpointError for a file that is no checkpoint) unless the checkpoint at
    ``path`` can start a run of ``meta``: what :func:`load_init` would refuse, found from the file
    alone, before a run spends minutes reading and rendering its data."""
    init_meta, _ = load_checkpoint(path)
    if (problem := init_problem(meta, init_meta, path, partial=partial)) is not None:
        raise InputError(problem)


def init_problem(meta: ModelMeta, init_meta: ModelMeta, path: Path, *, partial: bool) -> str | None:
    """Why the checkpoint ``path`` (of ``init_meta``) cannot start a run of ``meta``, or None."""

    def body(m: ModelMeta) -> tuple:
        return m.architecture, m.encoder, m.encoder_depth, m.in_channels

    same_decoder = tuple(meta.decoder_channels) == tuple(init_meta.decoder_channels)
    if body(meta) != body(init_meta) or not (same_decoder or partial):
        hint = "" if partial else " (--init-partial lets only the decoder widths differ)"
        return (f"--init {path} is a {init_meta.architecture}/{init_meta.encoder} (depth "
                f"{init_meta.encoder_depth}, decoder {list(init_meta.decoder_channels)}), not the "
                f"{meta.architecture}/{meta.encoder} (depth {meta.encoder_depth}, decoder "
                f"{list(meta.decoder_channels)}) this run trains; pass matching "
                f"--encoder/--encoder-depth/--decoder-channels or another checkpoint{hint}")
    if init_meta.refine_channels not in (0, meta.refine_channels):
        return (f"--init {path} has a full-resolution refinement {init_meta.refine_channels} channels "
                f"wide, not {meta.refine_channels}; pass --refine-channels {init_meta.refine_channels}")
    if meta.refine_channels and not same_decoder:
        return (f"--init {path}: a refined model starts only from the same decoder "
                f"{list(init_meta.decoder_channels)}; widen the decoder and add the refinement in two runs")
    return None


def load_init(model: torch.nn.Module, meta: ModelMeta, path: Path, *, partial: bool = False) -> None:
    """Start from another checkpoint's weights, so a longer or differently fed run builds on a finished one.

    Only the weights are taken: optimiser, schedule and history start afresh. The checkpoint must
    describe the same architecture, or the run would silently train a different network. With
    ``partial`` the decoder widths may differ: a decoder no stage of which is narrower starts as
    the trained one, computing the same output (:mod:`am.model.widen`); otherwise the trained
    encoder and every decoder tensor whose shape still fits are kept and the rest starts afresh,
    and the log says how much. A plain U-Net grows into a refined one of the same U-Net
    (``refine_channels`` > 0) with its output unchanged (:mod:`am.model.refine`).
    """
    init_meta, state = load_checkpoint(path)
    if (problem := init_problem(meta, init_meta, path, partial=partial)) is not None:
        raise InputError(problem)
    grows = init_meta.refine_channels == 0 < meta.refine_channels
    if grows:
        grow_refinement(model, state)
        log.info("starting from the weights of %s (%s) with a full-resolution refinement of %d channels "
                 "(same output at start)", path, init_meta.encoder, meta.refine_channels)
        return
    if not partial:
        model.load_state_dict(state)
        log.info("starting from the weights of %s (%s)", path, init_meta.encoder)
        return
    if can_widen(init_meta.decoder_channels, meta.decoder_channels):
        widen_decoder(model, state, init_meta.decoder_channels)
        log.info("starting from the weights of %s with its decoder %s widened to %s (same output; the new "
                 "channels start random and unconnected)", path, list(init_meta.decoder_channels),
                 list(meta.decoder_channels))
        return
    own = model.state_dict()
    fitting = {name: t for name, t in state.items() if name in own and own[name].shape == t.shape}
    model.load_state_dict(fitting, strict=False)
    fresh = [name for name in own if name not in fitting]
    kept_values = sum(own[name].numel() for name in fitting)
    log.info("starting from %d of %d tensors of %s (%.1f %% of the values); fresh: %s", len(fitting), len(own), path,
             100.0 * kept_values / max(1, sum(t.numel() for t in own.values())),
             ", ".join(sorted({name.rsplit(".", 2)[0] for name in fresh})) or "none")
