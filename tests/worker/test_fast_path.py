"""The worker's model path (am.model.predict) against a plain float32 reference, on CPU."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from am.errors import CheckpointError, InputError
from am.model import precision
from am.model.build import load_model
from am.model.precision import cpu_multiplies_bf16, resolve_compile, resolve_precision
from am.model.predict import Predictor


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(5, 64, 96), dtype=np.uint8)


def reference_masks(checkpoint: Path, tiles: np.ndarray) -> np.ndarray:
    """What the original worker computed: float32, contiguous layout, one tile at a time, threshold on p."""
    meta, model = load_model(checkpoint)
    out = []
    with torch.no_grad():
        for tile in tiles:
            x = torch.from_numpy(tile.astype(np.float32) / 255.0)[None, None]
            x = (x - meta.input_mean) / meta.input_std
            p = torch.sigmoid(model(x))[0, 0].numpy()
            out.append(np.where(p >= meta.threshold, 255, 0).astype(np.uint8))
    return np.stack(out)


def test_fast_path_equals_the_float32_reference_on_cpu(tiny_model: Path, tiles: np.ndarray) -> None:
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu", threads=1, batch_size=4, precision="fp32")
    assert (predictor.precision, predictor.compiled) == ("fp32", False)
    fast = predictor.predict(tiles)
    reference = reference_masks(tiny_model, tiles)
    agreement = float((fast == reference).mean())
    assert agreement >= 0.9999, agreement  # the bar is 99.9 %; float32 on CPU is all but exact
    assert predictor.last_times.tiles == len(tiles) and predictor.last_times.compute > 0


def test_bf16_on_cpu_gives_binary_masks(tiny_model: Path, tiles: np.ndarray) -> None:
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu", threads=1, precision="bf16")
    masks = predictor.predict(tiles)
    assert masks.shape == tiles.shape and set(np.unique(masks)) <= {0, 255}


def test_precision_and_compile_are_resolved_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("auto", "cuda:0") == "fp16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_multiplies_bf16() else "fp32")
    for has_amx, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "cpu_multiplies_bf16", lambda has_amx=has_amx: has_amx)
        assert resolve_precision("auto", "cpu") == expected and resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(InputError, match="not one of"):
        resolve_precision("int8", "cpu")
    assert resolve_compile("auto", "cuda") and not resolve_compile("auto", "cpu")
    assert resolve_compile("on", "cpu") and not resolve_compile("off", "cuda")
    with pytest.raises(InputError, match="compile mode"):
        resolve_compile("maybe", "cpu")


def test_bf16_counts_on_a_cpu_only_with_amx_and_only_where_onednn_may_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_multiplies_bf16()
    for limit, allowed in (("AVX512_CORE_AMX", True), ("all", True), ("AVX512_CORE_BF16", False), ("AVX2", False)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
        assert cpu_multiplies_bf16() is allowed, limit
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not cpu_multiplies_bf16()
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probe: no bf16 by default
    assert not cpu_multiplies_bf16()


def test_bf16_asked_for_on_a_cpu_without_amx_is_run_but_warned_about_once(
    tiny_model: Path, tiles: np.ndarray, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(precision, "cpu_multiplies_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="am.model.precision"):
        predictor = Predictor.from_checkpoint(tiny_model, device="cpu", threads=1, precision="bf16")
    assert predictor.precision == "bf16"
    assert [r.getMessage() for r in caplog.records].count(
        "bf16 on a CPU without AMX tile units is emulated and runs slower than fp32; use precision auto or fp32 there"
    ) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="am.model.precision"):
        assert Predictor.from_checkpoint(tiny_model, device="cpu", threads=1).precision == "fp32"
    assert not any("AMX" in r.getMessage() for r in caplog.records)


def test_auto_precision_on_a_cpu_with_amx_is_bf16_and_masks_stay_binary(
    tiny_model: Path, tiles: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cpu_multiplies_bf16", lambda: True)
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu", threads=1)
    assert predictor.precision == "bf16"
    assert next(predictor._model.parameters()).dtype == torch.bfloat16
    masks = predictor.predict(tiles)
    assert masks.shape == tiles.shape and set(np.unique(masks)) <= {0, 255}


def test_compile_failure_falls_back_under_auto_and_raises_under_on(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(module: torch.nn.Module, **kwargs: object) -> object:
        def call(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(CheckpointError, match="AM_COMPILE=off"):
        Predictor.from_checkpoint(tiny_model, device="cpu", compile="on")
    meta, model = load_model(tiny_model)
    with caplog.at_level(logging.WARNING, logger="am.model.precision"):
        predictor = Predictor(model, meta, compile=True)  # what "auto" does on CUDA
    assert not predictor.compiled
    assert any("torch.compile failed" in r.getMessage() for r in caplog.records)


def test_compile_past_its_budget_runs_uncompiled(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The compile blocks until released: it cannot end within any budget, however slow this machine.
    compiling, release, finished = threading.Event(), threading.Event(), threading.Event()

    def blocked(module: torch.nn.Module, **kwargs: object) -> object:
        def call(x: torch.Tensor) -> torch.Tensor:
            compiling.set()
            release.wait(60)
            finished.set()
            return module(x)
        return call

    monkeypatch.setattr(torch, "compile", blocked)
    meta, model = load_model(tiny_model)
    predictor = Predictor(model, meta, batch_size=1, compile=True, compile_budget_s=0.3)
    # The constructor came back while the compile was still running, and runs uncompiled.
    assert not finished.is_set()
    assert not predictor.compiled and predictor.compile_s > 0
    release.set()
    for thread in threading.enumerate():
        if thread.name == "am-compile":
            thread.join(60)  # let the abandoned compile end before the interpreter does
    assert compiling.is_set() and finished.is_set()
    assert not predictor.compiled  # a compile that ends late is not taken up


def test_compiled_model_serves_one_shape_padded(tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                tiles: np.ndarray) -> None:
    shapes: list[tuple[int, ...]] = []

    def recording(module: torch.nn.Module, **kwargs: object) -> object:
        assert kwargs.get("dynamic") is False
        def call(x: torch.Tensor) -> torch.Tensor:
            shapes.append(tuple(x.shape))
            return module(x)
        return call

    monkeypatch.setattr(torch, "compile", recording)
    meta, model = load_model(tiny_model)
    predictor = Predictor(model, meta, batch_size=4, compile=True)
    assert predictor.compiled and shapes == [(4, 1, meta.tile_size, meta.tile_size)]
    full = np.random.default_rng(2).integers(0, 256, size=(5, meta.tile_size, meta.tile_size), dtype=np.uint8)
    masks = predictor.predict(full)
    # 5 tiles: one full batch and one padded to the compiled shape; another tile size runs uncompiled.
    assert shapes[1:] == [(4, 1, meta.tile_size, meta.tile_size)] * 2
    predictor.predict(tiles)
    assert len(shapes) == 3
    eager = Predictor.from_checkpoint(tiny_model, device="cpu", batch_size=4, precision="fp32").predict(full)
    np.testing.assert_array_equal(masks, eager)
