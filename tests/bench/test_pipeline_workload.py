"""am.bench --pipeline-image runs the pipeline on the workload whose model rate it measured.

The overhead ratio divides the pipeline's wall time by tiles / model tiles per second; the
pipeline once ran at its own tile size, batch size, precision and compilation, so its tiles
and their arithmetic were not those the rate was measured on.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from am.bench import __main__ as bench_cli
from am.bench.pipeline import Workload, workload_option_in

SUMMARY = """job j1: 4 tile(s) segmented, model compute 2.0 s summed over workers
time: setup 1.0 s, prepare+segment 3.0 s, total 4.0 s
"""


def test_the_pipeline_gets_the_measured_tile_size_batch_and_arithmetic(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8))
    seen: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def fake_run(command: list[str], **kwargs: Any) -> Any:
        if command[1:3] != ["-m", "am.pipeline"]:
            return real_run(command, **kwargs)
        seen.append((command, kwargs["env"]))
        return subprocess.CompletedProcess(command, 0, stdout=SUMMARY, stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("AM_PRECISION", "bf16")  # the caller's own must not decide the workers' arithmetic
    monkeypatch.setenv("AM_COMPILE", "on")
    args = bench_cli.build_parser().parse_args([
        "--checkpoint", str(tiny_model), "--device", "cpu", "--threads", "1", "--tile-size", "64",
        "--batch-size", "2", "--tiles", "2", "--no-loop", "--precision", "fp32", "--pipeline-image", str(image),
        "--workers", "1"])
    out = bench_cli.run(args)
    (command, env), = seen
    options = dict(itertools.pairwise(command))
    assert (options["--tile-size"], options["--tile-overlap"], options["--batch-size"], options["--tta"]) == (
        "64", "32", "2", "off")
    assert "--no-register" in command
    assert (env["AM_PRECISION"], env["AM_COMPILE"], env["AM_POSTPROCESS"], env["CUDA_VISIBLE_DEVICES"]) == (
        "fp32", "off", "on", "")
    assert (out["tile_size"], out["batch_size"], out["precision"], out["compiled"]) == (64, 2, "fp32", False)
    assert out["pipeline"]["tiles"] == 4


def test_the_workload_is_resolved_and_keeps_the_default_overlap_where_the_tile_allows() -> None:
    gpu = Workload(tile_size=512, batch_size=64, precision="fp16", compiled=True, device="cuda")
    assert gpu.arguments() == ["--tile-size", "512", "--tile-overlap", "128", "--batch-size", "64", "--tta", "off"]
    env = gpu.environment({"AM_PRECISION": "auto", "AM_COMPILE": "auto", "PATH": "/bin"})
    assert (env["AM_PRECISION"], env["AM_COMPILE"], env["PATH"]) == ("fp16", "on", "/bin")
    assert "CUDA_VISIBLE_DEVICES" not in env


@pytest.mark.parametrize("arg", ["--tile-size", "--batch-size=8", "--tta", "--tile-overlap", "--batch", "--tile-s=256",
                                 "--tt"])
def test_a_pipeline_arg_that_changes_the_workload_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                                   arg: str) -> None:
    assert workload_option_in(["--no-register", arg, "8"]) == arg
    assert bench_cli.main(["--pipeline-image", "x.tif", f"--pipeline-arg={arg}"]) == 2
    assert f"--pipeline-arg {arg} would run the pipeline on another workload" in capsys.readouterr().err
    assert workload_option_in(["--no-register", "--scale", "2", "--backend", "local", "--", "-"]) is None
