"""Build the U-Net a :class:`ModelMeta` describes, offline, and write starter checkpoints.

Encoders are always built with ``encoder_weights=None``: nothing is fetched from a model hub,
weights come only from our own checkpoints::

    meta, model = load_model(Path("am/models/default.pt"))     # eval mode, on CPU
    write_test_checkpoint(tmp_path / "tiny.pt")               # a fast untrained model for tests
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from am.model.checkpoint import ModelMeta, load_checkpoint, save_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The tiny model for pipeline and worker tests: shallow, narrow, fast on a CPU.
TEST_ENCODER = "tu-mobilenetv3_small_100"
TEST_ENCODER_DEPTH = 5
TEST_DECODER_CHANNELS = (32, 16, 8, 8, 4)


def build_model(meta: ModelMeta) -> torch.nn.Module:
    """A freshly initialised smp U-Net with one output channel (mark logits), refined at full
    resolution where ``meta.refine_channels`` asks for it (:mod:`am.model.refine`)."""
    import segmentation_models_pytorch as smp

    kwargs = dict(
        encoder_name=meta.encoder,
        encoder_depth=meta.encoder_depth,
        encoder_weights=None,
        decoder_channels=tuple(meta.decoder_channels),
        in_channels=meta.in_channels,
        classes=1,
    )
    if meta.refine_channels > 0:
        from am.model.refine import RefinedUnet

        return RefinedUnet(refine_channels=meta.refine_channels, **kwargs)
    return smp.Unet(**kwargs)


def load_model(source: Path | bytes) -> tuple[ModelMeta, torch.nn.Module]:
    """Read a checkpoint and return its metadata and the model with its weights, in eval mode on CPU."""
    meta, state = load_checkpoint(source)
    model = build_model(meta)
    model.load_state_dict(state, strict=True)
    model.eval()
    return meta, model


def write_untrained_checkpoint(
    path: Path,
    *,
    encoder: str = "resnet18",
    encoder_depth: int = 5,
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    tile_size: int = 512,
    seed: int = 0,
    storage: str = "fp32",
) -> Path:
    """A seeded, randomly initialised checkpoint marked ``trained=False`` (for plumbing, not for masks)."""
    meta = ModelMeta(
        encoder=encoder,
        encoder_depth=encoder_depth,
        decoder_channels=tuple(decoder_channels),
        tile_size=tile_size,
        trained=False,
        training={"note": "untrained: random weights", "seed": seed},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(meta)
    save_checkpoint(Path(path), model, meta, storage=storage)
    return Path(path)


def write_test_checkpoint(path: Path, *, seed: int = 0) -> Path:
    """A small, fast untrained model (a narrow MobileNetV3-Small U-Net, stored as fp16) for tests.

    About 20 ms per 512x512 tile on two CPU cores; its masks are random but deterministic.
    """
    return write_untrained_checkpoint(
        path,
        encoder=TEST_ENCODER,
        encoder_depth=TEST_ENCODER_DEPTH,
        decoder_channels=TEST_DECODER_CHANNELS,
        seed=seed,
        storage="fp16",
    )
