"""A U-Net that sees the image at full resolution once more before it decides.

smp's U-Net joins encoder features to its decoder down to half resolution only: the encoder's
first stage already halves the image, so the last decoder stage draws full-size masks from
half-size features. Marks are small (radius 5-15 px), and on the synthetic held-out set 57 % of
the shipped model's wrong pixels lie within 1 px of a true mark's edge. :class:`RefinedUnet` adds
a short full-resolution branch: the normalised image and the last decoder stage's features go
through two 3x3 convolutions, and a 1x1 convolution adds a correction to the U-Net's logits.

That correction's weights start at zero, so a refined model grown from a trained U-Net computes
exactly what the U-Net computes until training moves them (:func:`grow_refinement`), and a
checkpoint without ``refine.*`` tensors is a plain U-Net (``refine_channels`` 0)::

    model = build_model(replace(meta, refine_channels=16))
    grow_refinement(model, trained_unet_state)
"""

from __future__ import annotations

from collections.abc import Mapping

import segmentation_models_pytorch as smp
import torch
from torch import nn

REFINE = "refine."


class FullResolutionRefinement(nn.Module):
    """Logit corrections from the image and the decoder's full-size features (zero at start)."""

    def __init__(self, image_channels: int, feature_channels: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(image_channels + feature_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(channels, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(torch.cat([image, features], dim=1)))


class RefinedUnet(smp.Unet):
    """smp's U-Net plus :class:`FullResolutionRefinement`; its own tensors keep the U-Net's names."""

    def __init__(self, *, refine_channels: int, in_channels: int, decoder_channels: tuple[int, ...],
                 **unet_kwargs) -> None:
        super().__init__(in_channels=in_channels, decoder_channels=decoder_channels, **unet_kwargs)
        self.refine = FullResolutionRefinement(in_channels, decoder_channels[-1], refine_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input_shape(x)
        features = self.decoder(self.encoder(x))
        return self.segmentation_head(features) + self.refine(x, features)


def grow_refinement(model: RefinedUnet, unet_state: Mapping[str, torch.Tensor]) -> None:
    """Load a plain U-Net's weights into ``model``; its refinement keeps its fresh (zero-output) weights.

    Raises ``ValueError`` when ``unet_state`` is not exactly the U-Net part of ``model``.
    """
    own = model.state_dict()
    unet_names = {name for name in own if not name.startswith(REFINE)}
    if set(unet_state) != unet_names:
        extra = sorted(set(unet_state) - unet_names)[:3]
        missing = sorted(unet_names - set(unet_state))[:3]
        raise ValueError(f"not this model's U-Net: extra tensors {extra}, missing {missing}")
    own.update({name: t.to(own[name].dtype) for name, t in unet_state.items()})
    model.load_state_dict(own)
