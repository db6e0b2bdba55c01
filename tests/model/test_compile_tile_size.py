"""A compiled Predictor runs the tile size it was compiled for: the one it is given, not always the checkpoint's.

A compiled model serves one batch shape; compiled for the checkpoint's 512 px while every tile
had another size, it spent the compile budget for nothing, and the benchmark said "compiled yes"
of measurements that ran uncompiled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from am.bench import __main__ as bench_cli
from am.bench.model import synthetic_tiles
from am.errors import InputError
from am.model.checkpoint import load_checkpoint
from am.model.predict import Predictor


@pytest.fixture
def compiled_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Stands in for torch.compile (seconds to minutes) and records the input shapes the compiled model sees."""
    calls: list[tuple[int, ...]] = []

    def fake_compile(model: torch.nn.Module, **kwargs: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        def compiled(x: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(x.shape))
            return model(x)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


def test_it_compiles_for_the_tile_size_it_is_given(tiny_model: Path, compiled_calls: list[tuple[int, ...]]) -> None:
    meta, _ = load_checkpoint(tiny_model)
    assert meta.tile_size != 64
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu", batch_size=2, precision="fp32", compile="on",
                                          tile_size=64)
    assert predictor.runs_compiled(64) and not predictor.runs_compiled(meta.tile_size)
    warm_up = len(compiled_calls)
    predictor.predict(synthetic_tiles(3, size=64))
    # Three tiles in batches of two: both calls compiled, the short one padded to the compiled shape.
    assert [(shape[0], *shape[2:]) for shape in compiled_calls[warm_up:]] == [(2, 64, 64)] * 2


def test_another_tile_size_runs_uncompiled_and_says_so_once(tiny_model: Path, compiled_calls: list[tuple[int, ...]],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    meta, _ = load_checkpoint(tiny_model)
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu", batch_size=2, precision="fp32", compile="on")
    assert predictor.runs_compiled(meta.tile_size) and not predictor.runs_compiled(64)
    warm_up = len(compiled_calls)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="am.model.predict"):
        predictor.predict(synthetic_tiles(4, size=64))
    assert len(compiled_calls) == warm_up
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"the model was compiled for {meta.tile_size}x{meta.tile_size} tiles; these 64x64 tiles run "
                    f"uncompiled, and slower (tile_size {meta.tile_size} runs the compiled model)"]


def test_a_tile_size_the_model_cannot_take_is_refused(tiny_model: Path) -> None:
    with pytest.raises(InputError, match="tile_size must be >= 0"):
        Predictor.from_checkpoint(tiny_model, device="cpu", tile_size=-64)
    with pytest.raises(InputError, match="tile size 100 to compile for is not a positive multiple of 32"):
        Predictor.from_checkpoint(tiny_model, device="cpu", tile_size=100)


def test_the_bench_measures_compiled_what_it_calls_compiled(tiny_model: Path,
                                                            compiled_calls: list[tuple[int, ...]]) -> None:
    args = bench_cli.build_parser().parse_args([
        "--checkpoint", str(tiny_model), "--device", "cpu", "--threads", "1", "--tile-size", "64",
        "--batch-size", "2", "--tiles", "2", "--no-loop", "--precision", "fp32", "--compile", "on"])
    out = bench_cli.run(args)
    assert out["compiled"] is True
    assert len(compiled_calls) > 1 and {shape[2:] for shape in compiled_calls} == {(64, 64)}
