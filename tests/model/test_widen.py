"""Widening a decoder keeps the trained model's output and leaves the new channels free to learn."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from am.model.build import TEST_DECODER_CHANNELS, TEST_ENCODER, build_model
from am.model.checkpoint import ModelMeta
from am.model.predict import prepare_input
from am.model.widen import can_widen, widen_decoder

NARROW = ModelMeta(encoder=TEST_ENCODER, encoder_depth=5, decoder_channels=TEST_DECODER_CHANNELS)
WIDE = (48, 16, 12, 16, 8)


def trained_like(meta: ModelMeta, *, seed: int = 5) -> torch.nn.Module:
    """A seeded model whose batch norms hold statistics of their own, as a trained one's do."""
    torch.manual_seed(seed)
    model = build_model(meta)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, 64, 64) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randint(0, 256, (2, 1, 96, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_widened_model_computes_what_the_trained_one_did(pixels: torch.Tensor) -> None:
    narrow = trained_like(NARROW)
    wide = build_model(replace(NARROW, decoder_channels=WIDE))
    widen_decoder(wide, narrow.state_dict(), NARROW.decoder_channels)
    x = prepare_input(pixels, NARROW)
    with torch.no_grad():
        before = narrow(x)
        assert torch.allclose(wide.eval()(x), before, atol=1e-4)
        # Batch statistics of the old channels do not see the new ones either.
        assert torch.allclose(wide.train()(x), narrow.train()(x), atol=1e-4)
    # Old weights sit where they were; the new channels are random, not copies and not zero.
    conv2 = wide.decoder.blocks[0].conv2[0].weight
    assert torch.equal(conv2[:32, :32], narrow.decoder.blocks[0].conv2[0].weight)
    assert conv2[32:].abs().sum() > 0
    assert torch.count_nonzero(conv2[:32, 32:]) == 0
    head = wide.segmentation_head[0].weight
    assert torch.count_nonzero(head[:, 4:]) == 0


def test_new_channels_learn_from_the_first_step(pixels: torch.Tensor) -> None:
    narrow = trained_like(NARROW)
    wide = build_model(replace(NARROW, decoder_channels=WIDE))
    widen_decoder(wide, narrow.state_dict(), NARROW.decoder_channels)
    wide.train()
    wide(prepare_input(pixels, NARROW)).sigmoid().mean().backward()
    # The zero links into the old channels and the head get gradients, so training connects them.
    assert wide.segmentation_head[0].weight.grad[:, 4:].abs().sum() > 0
    assert wide.decoder.blocks[3].conv1[0].weight.grad[:8, 8:12].abs().sum() > 0


def test_narrower_stages_are_refused() -> None:
    assert can_widen((32, 16, 8, 8, 4), (32, 16, 8, 8, 4)) and can_widen((32, 16, 8, 8, 4), WIDE)
    assert not can_widen((32, 16, 8, 8, 4), (32, 16, 8, 8, 2))
    assert not can_widen((32, 16, 8, 8, 4), (32, 16, 8, 8))
    narrower = build_model(replace(NARROW, decoder_channels=(32, 16, 8, 8, 2)))
    with pytest.raises(ValueError, match=r"decoder \[32, 16, 8, 8, 2\] is not a widening of \[32, 16, 8, 8, 4\]"):
        widen_decoder(narrower, trained_like(NARROW).state_dict(), NARROW.decoder_channels)
