"""python -m am.bench: its JSON, the pipeline summary parsing and the overhead arithmetic."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from am.bench import __main__ as bench_cli
from am.bench.pipeline import Workload, parse_summary, pipeline_overhead
from am.errors import InputError, JobFailed
from am.job import JobReport
from am.orchestrator import PipelineSummary

SUMMARY = """groups: bench
tiles: 169 (0 reused from an earlier run)
job 20261124-101500-a1b2c3: 169 tile(s) segmented, model compute 41.3 s summed over workers
time: setup 1.4 s, prepare+segment 22.5 s, stitch 2.4 s, clean-up 0.4 s, total 26.7 s
within prepare+segment: prepare busy 3.9 s, upload busy 1.1 s, collect busy 0.6 s, tail 8.2 s
"""


def test_json_reports_model_and_worker_loop_figures(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_cli.main(["--checkpoint", str(tiny_model), "--device", "cpu", "--threads", "1", "--tile-size", "64",
                           "--batch-size", "4", "--tiles", "8", "--agreement", "2", "--precision", "fp32", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_tiles_per_s"] > 0 and out["worker_tiles_per_s"] > 0
    assert out["worker_tiles"] == 8 and out["model_tiles"] == 8
    assert set(out["worker_ms_per_tile"]) == {"receive", "download", "decode", "h2d", "compute", "d2h", "encode",
                                              "upload", "report", "delete"}
    assert out["worker_ms_per_tile"]["compute"] > 0 and out["worker_ms_per_tile"]["upload"] > 0
    assert out["mask_agreement"] == 1.0  # float32 on CPU is the reference itself
    assert (out["precision"], out["compiled"], out["limit_tiles_per_s"]) == ("fp32", False, None)
    assert out["gflop_per_tile"] > 0


def test_the_model_is_measured_with_opencv_threads_as_in_a_worker(tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Post-processing is OpenCV: measured at OpenCV's default threads it is not what a worker does."""
    import cv2

    import am.bench.model as bench_model
    from am.worker.worker import OPENCV_THREADS

    seen: list[int] = []
    measure = bench_model.model_throughput

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(cv2.getNumThreads())
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench_model, "model_throughput", recording)
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        assert bench_cli.main(["--checkpoint", str(tiny_model), "--device", "cpu", "--tile-size", "64", "--tiles", "4",
                               "--batch-size", "4", "--no-loop", "--json"]) == 0
        assert seen == [OPENCV_THREADS] and json.loads(capsys.readouterr().out)["opencv_threads"] == OPENCV_THREADS
        assert cv2.getNumThreads() == 2  # given back to the caller as it was
    finally:
        cv2.setNumThreads(before)


def test_table_names_every_figure(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_cli.main(["--checkpoint", str(tiny_model), "--device", "cpu", "--tile-size", "64", "--tiles", "4",
                           "--no-loop", "--peak-tflops", "1"]) == 0
    text = capsys.readouterr().out
    assert "model-only" in text and "tiles/s" in text and "limit" in text and "worker " not in text


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_cli.main(["--tiles", "-1"]) == 2
    assert "--tiles" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        bench_cli.main(["--checkpoint", "a.pt", "--encoder", "resnet18"])
    assert exited.value.code == 2
    assert "argument --encoder: not allowed with argument --checkpoint" in capsys.readouterr().err


def test_parse_summary_reads_tiles_compute_and_stages() -> None:
    tiles, compute, stages = parse_summary(SUMMARY)
    assert (tiles, compute) == (169, 41.3)
    assert stages == {"setup": 1.4, "prepare+segment": 22.5, "clean-up": 0.4, "stitch": 2.4, "total": 26.7,
                      "prepare busy": 3.9, "upload busy": 1.1, "collect busy": 0.6, "tail": 8.2}
    with pytest.raises(JobFailed, match="lacks the job or time line"):
        parse_summary("groups: bench\n")


def test_parse_summary_reads_what_the_pipeline_prints() -> None:
    summary = PipelineSummary(groups=["bench"], tiles=169,
                              job=JobReport("20261124-101500-a1b2c3", 169, 169, 0, 41.3),
                              seconds={"setup": 1.44, "prepare+segment": 22.5, "clean-up": 0.36, "stitch": 2.4},
                              busy={"prepare busy": 3.9, "upload busy": 1.1, "collect busy": 0.6, "tail": 8.2})
    tiles, compute, stages = parse_summary("\n".join(summary.lines()) + "\n")
    assert (tiles, compute) == (169, 41.3)
    assert stages == {"setup": 1.4, "prepare+segment": 22.5, "clean-up": 0.4, "stitch": 2.4, "total": 26.7,
                      "prepare busy": 3.9, "upload busy": 1.1, "collect busy": 0.6, "tail": 8.2}


WORKLOAD = Workload(tile_size=512, batch_size=4, precision="fp32", compiled=False, device="cpu")


def test_pipeline_overhead_ratio_uses_the_model_time_of_its_tiles(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "image.tif"
    image.write_bytes(b"II*\x00")
    seen: dict[str, Any] = {}

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen["command"] = command
        dataset = Path(command[3])
        seen["source"] = sorted(p.name for p in (dataset / "source" / "bench").iterdir())
        return subprocess.CompletedProcess(command, 0, stdout=SUMMARY, stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    result = pipeline_overhead(image, checkpoint=Path("m.pt"), workers=2, model_tiles_per_s=6.5, workload=WORKLOAD,
                               workdir=tmp_path)
    assert seen["command"][1:3] == ["-m", "am.pipeline"] and "--no-register" in seen["command"]
    assert seen["source"] == ["image.tif"]
    assert result.model_s == pytest.approx(169 / 6.5)
    assert result.overhead_ratio == pytest.approx(result.wall_s / (169 / 6.5))
    assert result.compute_ratio == pytest.approx(result.wall_s / (41.3 / 2))
    assert result.summed_compute_ratio == pytest.approx(result.wall_s / 41.3)


def test_pipeline_overhead_reports_a_failed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "image.tif"
    image.write_bytes(b"II*\x00")
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(
        command, 1, stdout="", stderr="ERROR am.pipeline: image is broken"))
    with pytest.raises(JobFailed, match="image is broken"):
        pipeline_overhead(image, checkpoint=Path("m.pt"), workers=2, model_tiles_per_s=1.0, workload=WORKLOAD,
                          workdir=tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        pipeline_overhead(tmp_path / "none.tif", checkpoint=Path("m.pt"), workers=2, model_tiles_per_s=1.0,
                          workload=WORKLOAD, workdir=tmp_path)


@pytest.mark.parametrize("peak", ["-1", "0", "nan", "inf"])
def test_a_peak_that_is_no_positive_figure_is_a_usage_error(capsys: pytest.CaptureFixture[str], peak: str) -> None:
    # -1 gave a negative limit in tiles per second, and 0 was taken silently for "not given".
    assert bench_cli.main(["--peak-tflops", peak]) == 2
    assert f"--peak-tflops {float(peak)} must be a finite number > 0" in capsys.readouterr().err


@pytest.mark.parametrize("budget", ["0", "-5", "nan", "inf"])
def test_a_compile_budget_that_is_no_positive_figure_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                                      budget: str) -> None:
    assert bench_cli.main(["--compile-budget", budget]) == 2
    assert f"--compile-budget {float(budget)} must be a finite number of seconds > 0" in capsys.readouterr().err


def test_the_compile_budget_reaches_the_predictor(tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # A bench under a deadline (benchmarks/gpu_train.sh) must not spend it all compiling.
    from am.model.predict import Predictor

    given: list[dict[str, Any]] = []
    load = Predictor.from_checkpoint

    def spy(*args: Any, **kwargs: Any) -> Predictor:
        given.append(kwargs)
        return load(*args, **kwargs)

    monkeypatch.setattr(Predictor, "from_checkpoint", spy)
    common = ["--checkpoint", str(tiny_model), "--device", "cpu", "--threads", "1", "--tile-size", "64",
              "--batch-size", "2", "--tiles", "2", "--precision", "fp32", "--no-loop", "--json"]
    assert bench_cli.main([*common, "--compile-budget", "7.5"]) == 0
    assert bench_cli.main(common) == 0
    assert given[0]["compile_budget_s"] == 7.5 and "compile_budget_s" not in given[1]


def test_a_tile_size_that_is_no_multiple_of_32_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_cli.main(["--tile-size", "100"]) == 2
    assert "--tile-size 100 must be a positive multiple of 32" in capsys.readouterr().err


def test_a_tile_size_above_the_pipelines_largest_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """65536 px tiles ended in a MemoryError traceback; the pipeline's own tile_size stops at MAX_TILE_SIZE."""
    assert bench_cli.main(["--tile-size", "65536", "--no-loop"]) == 2
    err = capsys.readouterr().err
    assert "--tile-size 65536 is above 4096, the largest tile the pipeline runs (setting tile_size)" in err, err


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_device_this_machine_lacks_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch, device: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from am.cli import run_main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=f"--device {device}: torch finds no CUDA device.*use cpu here"):
        bench_cli.main(["--device", device, "--no-loop"])
    assert run_main(lambda: bench_cli.main(["--device", device, "--no-loop"]), name="am.bench") == 1
    assert f"--device {device}: torch finds no CUDA device" in capsys.readouterr().err


def test_a_device_that_is_no_device_is_refused() -> None:
    with pytest.raises(InputError, match="--device gpu0: not a device name; use cpu or cuda"):
        bench_cli.main(["--device", "gpu0", "--no-loop"])
