"""The CUDA-only branches of training and inference, exercised on the CPU: the device's answers are
faked where torch asks the GPU, and fp16 arithmetic runs on the CPU where the code allows it."""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import am.train.loop as loop
from am.model.build import build_model
from am.model.checkpoint import ModelMeta
from am.model.precision import cast_for_inference
from am.model.predict import prepare_input
from am.train.data import Labelled, synthetic_images
from am.train.loop import TrainConfig, autocast_dtype, train
from am.train.runfiles import state_path

TINY = {"encoder": "tu-mobilenetv3_small_100", "encoder_depth": 5, "decoder_channels": (32, 16, 8, 8, 4)}
FP16_MAX = 65504.0


@pytest.fixture(scope="module")
def images() -> list[Labelled]:
    return synthetic_images(count=4, size=128, seed=11)


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, *, major: int) -> None:
    """torch.cuda answering as a GPU of compute capability ``major``.x would, bf16 tensors included."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=major, minor=5 if major == 7 else 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True, raising=False)


@pytest.mark.parametrize(("major", "expected"), [(7, torch.float16), (8, torch.bfloat16), (9, torch.bfloat16)])
def test_training_uses_bf16_only_where_the_gpu_computes_it(monkeypatch: pytest.MonkeyPatch, major: int,
                                                           expected: torch.dtype) -> None:
    _fake_gpu(monkeypatch, major=major)
    if major == 7:  # a T4 or V100: torch's default answer counts emulated bf16 as support
        assert torch.cuda.is_bf16_supported()
    assert autocast_dtype(torch.device("cuda")) == expected
    assert autocast_dtype(torch.device("cpu")) is None


def test_the_optimizer_step_skipped_on_overflow_leaves_the_schedule_where_it_is() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    for loss_scale, taken in ((math.inf, False), (1.0, True)):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale((weight * loss_scale).sum()).backward()
        before, epoch = weight.detach().clone(), scheduler.last_epoch
        assert loop._optimizer_step(optimizer, scheduler, scaler, [weight]) is taken
        assert torch.equal(weight.detach(), before) is not taken
        assert scheduler.last_epoch == epoch + taken
    assert scaler.get_scale() == 2.0**15  # backed off once, for the overflow


def test_fp16_training_keeps_the_gradient_scale_and_schedule_across_a_resume(
        tmp_path: Path, images: list[Labelled], monkeypatch: pytest.MonkeyPatch) -> None:
    # The fp16 branch of a GPU without bf16, run on the CPU (autocast and GradScaler both exist there).
    monkeypatch.setattr(loop, "autocast_dtype", lambda device: torch.float16)
    out = tmp_path / "m.pt"
    config = TrainConfig(out=out, **TINY, epochs=1, steps_per_epoch=3, batch_size=2, crop=64, warmup_steps=1,
                         threads=1, keep_state=True)
    train(config, images[:3], images[3:])
    state = torch.load(state_path(out), weights_only=True)
    scale = state["scaler"]["scale"]
    skipped = round(math.log2(2.0**16 / scale))  # each overflow halves the scale (no growth in 3 steps)
    assert skipped >= 1, "these crops overflow fp16 at the first scale; the check below needs a skipped step"
    assert state["scheduler"]["last_epoch"] == 3 - skipped

    state["scaler"]["scale"] = 8.0  # a scale no fresh scaler starts from, nor backs off to in one epoch
    torch.save(state, state_path(out))
    train(TrainConfig(**{**config.__dict__, "epochs": 2, "resume": True}), images[:3], images[3:])
    resumed = torch.load(state_path(out), weights_only=True)
    assert resumed["epoch"] == 1 and resumed["scaler"]["scale"] == 8.0


def _tiny_with_a_huge_variance() -> tuple[torch.nn.Module, str]:
    """A model whose float32 output is unchanged but one batch-norm running variance exceeds fp16's range."""
    torch.manual_seed(0)
    model = build_model(ModelMeta(**TINY)).eval()
    name, bn = next((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                    and n.startswith("decoder"))
    with torch.no_grad():  # a larger variance and a weight as much larger: the same normalised output
        old = bn.running_var.clone()
        bn.running_var.copy_(old * 1.0e6 + 2 * FP16_MAX)  # every channel past fp16's largest value
        bn.weight.mul_(torch.sqrt(bn.running_var + bn.eps) / torch.sqrt(old + bn.eps))
    return model, name


def test_fp16_inference_keeps_batch_norm_statistics_in_float32() -> None:
    meta = ModelMeta(**TINY)
    model, name = _tiny_with_a_huge_variance()
    x = prepare_input(torch.randint(0, 255, (1, 1, 64, 64), dtype=torch.uint8), meta)
    with torch.inference_mode():
        reference = torch.sigmoid(model(x))
    naive = build_model(meta).eval()
    naive.load_state_dict(model.state_dict())
    naive = naive.to(torch.float16)
    float_norm = copy.deepcopy(model.get_submodule(name))
    assert torch.isinf(naive.get_submodule(name).running_var).all()  # what a plain cast does to it
    cast = cast_for_inference(model, torch.float16)
    bn = cast.get_submodule(name)
    assert bn.running_var.dtype == torch.float32 and torch.isfinite(bn.running_var).all()
    assert bn.running_var.min() > FP16_MAX
    assert cast.segmentation_head[0].weight.dtype == torch.float16
    with torch.inference_mode():
        assert (torch.sigmoid(cast(x.half()).float()) - reference).abs().max() < 0.02
        # The layer itself: normalised as in float32, where the plain cast leaves only its bias.
        torch.manual_seed(1)
        features = torch.randn(1, bn.num_features, 8, 8) * 1.0e3
        expected = float_norm(features)
        got = bn(features.half()).float()
        plain = naive.get_submodule(name)(features.half()).float()
    assert (got - expected).abs().max() < 0.01 * expected.abs().max()
    bias = naive.get_submodule(name).bias.float().view(1, -1, 1, 1)
    assert torch.allclose(plain, bias.expand_as(plain), atol=1e-3)


def test_bf16_and_float32_inference_cast_as_before() -> None:
    model = build_model(ModelMeta(**TINY)).eval()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert cast_for_inference(model, torch.float32) is model and bn.running_var.dtype == torch.float32
    cast_for_inference(model, torch.bfloat16)
    assert bn.running_var.dtype == torch.bfloat16  # bf16 has float32's range
