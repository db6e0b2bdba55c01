"""int8 weight storage: a quarter of fp32's bytes for the convolutions, float32 back on load, damage named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from am.bench.model import mask_agreement
from am.errors import CheckpointError
from am.evaluate.heldout import held_out_images
from am.model.build import build_model
from am.model.checkpoint import ModelMeta, default_model_path, load_checkpoint, save_checkpoint
from am.model.predict import Predictor
from am.model.storage import INT8_LEVELS, dequantize, pack, quantize, unpack

TINY = {"encoder": "tu-mobilenetv3_small_100", "encoder_depth": 5, "decoder_channels": (32, 16, 8, 8, 4)}


def _model(seed: int = 0) -> tuple[ModelMeta, torch.nn.Module]:
    meta = ModelMeta(**TINY)
    torch.manual_seed(seed)
    return meta, build_model(meta)


def test_quantize_keeps_each_output_channel_within_half_a_step() -> None:
    weight = torch.randn(6, 3, 3, 3) * torch.tensor([1e-4, 1e-2, 1.0, 10.0, 0.5, 3.0]).reshape(-1, 1, 1, 1)
    weight[4] = 0.0  # an all-zero channel
    levels, scale = quantize(weight)
    assert levels.dtype == torch.int8 and levels.shape == weight.shape and scale.shape == (6,)
    assert int(levels.abs().max()) == INT8_LEVELS, "each channel's largest weight takes the top level"
    assert scale[4] == 1.0 and not levels[4].any(), "a zero channel gets scale 1 and comes back as zeros"
    back = dequantize(levels, scale, key="w", name="m.pt")
    error = (back - weight).abs().reshape(6, -1).amax(dim=1)
    assert torch.all(error <= scale / 2 * (1 + 1e-5)), "rounding moves no weight by more than half a step"
    relative = error / weight.abs().reshape(6, -1).amax(dim=1).clamp(min=1e-12)
    assert torch.all(relative[[0, 1, 2, 3, 5]] < 0.005), "small channels keep their precision: a scale per channel"


def test_pack_stores_only_convolution_weights_as_int8() -> None:
    _, model = _model()
    state = model.state_dict()
    stored, scales = pack(state, "int8")
    assert set(stored) == set(state)
    assert set(scales) == {k for k, v in state.items() if v.is_floating_point() and v.ndim >= 2}
    for key, tensor in stored.items():
        if key in scales:
            assert tensor.dtype == torch.int8
        elif key.endswith(("running_mean", "running_var")):
            assert tensor.dtype == torch.float32
        elif state[key].is_floating_point():
            assert tensor.dtype == torch.float16, f"{key}: biases and BatchNorm weights as fp16 stores them"
        else:
            assert torch.equal(tensor, state[key])
    assert pack(state, "fp32")[1] == {} and pack(state, "fp16")[1] == {}
    with pytest.raises(ValueError, match="'int4' is not one of fp32, fp16, int8"):
        pack(state, "int4")


def test_int8_checkpoint_loads_with_weights_only_as_float32_and_is_half_an_fp16_one(tmp_path: Path) -> None:
    meta, model = _model()
    fp16, int8 = tmp_path / "fp16.pt", tmp_path / "int8.pt"
    save_checkpoint(fp16, model, meta, storage="fp16")
    save_checkpoint(int8, model, meta, storage="int8")
    raw = torch.load(int8, map_location="cpu", weights_only=True)
    assert raw["version"] == 2 and raw["scales"], "an int8 file is version 2, so older builds refuse it"
    assert torch.load(fp16, map_location="cpu", weights_only=True)["version"] == 1, "fp16 files stay version 1"
    assert int8.stat().st_size < 0.65 * fp16.stat().st_size
    loaded_meta, state = load_checkpoint(int8)
    assert loaded_meta == meta
    reference = model.state_dict()
    for key, tensor in state.items():
        assert tensor.dtype == reference[key].dtype
        if key in raw["scales"]:
            step = raw["scales"][key].reshape((-1,) + (1,) * (tensor.ndim - 1))
            assert torch.all((tensor - reference[key]).abs() <= step / 2 * (1 + 1e-5) + 1e-7)
        elif tensor.is_floating_point():
            torch.testing.assert_close(tensor, reference[key], rtol=2e-3, atol=1e-4)


def test_damaged_int8_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    meta, model = _model()
    stored, scales = pack(model.state_dict(), "int8")
    key = next(iter(scales))
    cases = {
        "no_scale": (stored, {k: v for k, v in scales.items() if k != key}, f"stores {key} as int8 without a scale"),
        "wrong_shape": (stored, {**scales, key: scales[key][:-1]}, f"{key} is not stored as int8 with one positive"),
        "zero_scale": (stored, {**scales, key: torch.zeros_like(scales[key])}, "one positive scale per output channel"),
        "stray_scale": (stored, {**scales, "nowhere.weight": torch.ones(3)}, "does not store"),
    }
    for label, (state, scale_dict, message) in cases.items():
        path = tmp_path / f"{label}.pt"
        torch.save({"format": "am-segm-checkpoint", "version": 2, "meta": meta.to_dict(), "state_dict": state,
                    "scales": scale_dict}, path)
        with pytest.raises(CheckpointError, match=message) as info:
            load_checkpoint(path)
        assert f"{label}.pt" in str(info.value) and "train or export it again" in str(info.value)
    with pytest.raises(CheckpointError, match="not stored as int8"):
        unpack({key: stored[key].float()}, {key: scales[key]}, name="m.pt")


def test_the_shipped_model_draws_the_same_masks_from_int8_weights(tmp_path: Path) -> None:
    meta, state = load_checkpoint(default_model_path())
    model = build_model(meta)
    model.load_state_dict(state)
    path = tmp_path / "int8.pt"
    save_checkpoint(path, model, meta, storage="int8")
    assert path.stat().st_size < 0.55 * default_model_path().stat().st_size
    images = np.stack([item.image for item in held_out_images(4)])
    shipped = Predictor.from_checkpoint(default_model_path(), device="cpu", threads=1, batch_size=2, precision="fp32")
    quantized = Predictor.from_checkpoint(path, device="cpu", threads=1, batch_size=2, precision="fp32")
    assert mask_agreement(quantized, shipped, images) > 0.998
