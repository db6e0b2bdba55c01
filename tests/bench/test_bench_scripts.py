"""The benchmark and example scripts refuse bad options before any work, name what they measured
honestly, and leave nothing half-written: each check runs the script's own functions, at toy size."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from am.register.testing import draw_fuzz_case
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"


def script(name: str) -> Any:
    return load_script(BENCHMARKS / f"{name}.py")


def refused(main: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The error line of an option ``main`` refuses through argparse (exit 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# benchmarks/load_test.py


@pytest.fixture
def load_test(monkeypatch: pytest.MonkeyPatch) -> Any:
    module = script("load_test")

    def no_drawing(size: int, **kwargs: Any) -> Any:
        raise AssertionError("the image was drawn before the options were checked")

    monkeypatch.setattr(module, "draw_image", no_drawing)
    return module


@pytest.mark.parametrize(("argv", "says"), [
    (["--size", "0"], "--size 0: give an image side from 32"),
    (["--size", "-5"], "--size -5: give an image side from 32"),
    (["--size", "31"], "--size 31: give an image side from 32"),
    (["--size", "40001"], "to 40000 px"),
    (["--workers", "0"], "--workers 0: give at least 1"),
    (["--tile-size", "100"], "tile_size = 100 is not allowed"),
    (["--model", "no-such.pt"], "--model no-such.pt is not a file"),
])
def test_load_test_refuses_bad_options_before_drawing(load_test: Any, tmp_path: Path, argv: list[str], says: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    assert says in refused(load_test.main, [*argv, "--work-dir", str(work)], capsys)
    assert not work.exists()


def test_load_test_refuses_a_file_as_its_work_dir(load_test: Any, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert "is a file; give a folder path" in refused(load_test.main, ["--work-dir", str(tmp_path / "file")], capsys)


def test_load_test_gives_the_pipeline_absolute_paths_for_relative_ones(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline runs from the repository root: a relative --work-dir or --model would point elsewhere there."""
    load_test = script("load_test")
    monkeypatch.chdir(tmp_path)
    Path("model.pt").write_bytes(b"a checkpoint")
    seen: dict[str, Any] = {}
    popen = subprocess.Popen

    def recording(command: list[str], **kwargs: Any) -> subprocess.Popen:
        if "am.pipeline" not in command:
            return popen(command, **kwargs)
        seen.update(command=command, cwd=kwargs["cwd"], cache=kwargs["env"]["XDG_CACHE_HOME"])
        return popen([sys.executable, "-c", "pass"], **kwargs)

    monkeypatch.setattr(load_test.subprocess, "Popen", recording)
    report = load_test.run_load_test(size=32, workers=1, model=Path("model.pt"), work_dir=Path("rel"), timeout_s=60)
    command = seen["command"]
    dataset, model = Path(command[command.index("am.pipeline") + 1]), Path(command[command.index("--model") + 1])
    assert seen["cwd"] == load_test.REPO
    assert dataset == tmp_path / "rel" / "dataset-32" and (dataset / "source" / "load" / "image.tif").is_file()
    assert model == tmp_path / "model.pt" and Path(seen["cache"]) == tmp_path / "rel" / "cache"
    assert report.model == str(model) and not report.ok  # the stand-in pipeline made no mask


def test_a_failed_draw_leaves_no_temporary_file_and_a_killed_ones_is_removed(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import tifffile

    load_test = script("load_test")
    folder = tmp_path / "dataset-32" / "source" / "load"

    def failing(handle: Any, image: Any, **kwargs: Any) -> None:
        handle.write(b"half an image")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", failing)
    with pytest.raises(OSError, match="No space left"):
        load_test.ensure_dataset(tmp_path, 32)
    assert list(folder.iterdir()) == []
    monkeypatch.undo()
    left = folder / f".image.tif.{'0' * 32}.tmp"  # as a run killed while writing leaves it
    left.write_bytes(b"half an image")
    load_test.ensure_dataset(tmp_path, 32)
    assert [p.name for p in folder.iterdir()] == ["image.tif"]
    assert tifffile.imread(folder / "image.tif").shape == (32, 32)


def test_make_clean_data_removes_the_load_test_data_too() -> None:
    done = subprocess.run(["make", "-n", "clean-data"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "data/inference" in done.stdout and "data/load-test" in done.stdout


# benchmarks/allocator_bench.py


@pytest.mark.parametrize("option", ["--rounds", "--block-mb", "--blocks"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_allocator_bench_refuses_non_positive_sizes(option: str, value: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert f"{option} {value}: give a whole number >= 1" in refused(script("allocator_bench").main,
                                                                    [option, value], capsys)


def test_allocator_bench_fails_with_the_probes_output_when_it_measured_nothing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A probe reporting fewer rounds than asked would otherwise read as 0 s, the best result there is."""
    bench = script("allocator_bench")
    monkeypatch.setattr(bench, "PROBE", "import sys; print('False 0'); print('probe gave up', file=sys.stderr)")
    assert bench.main(["--rounds", "2", "--block-mb", "1", "--blocks", "1"]) == 1
    captured = capsys.readouterr()
    assert "did not report 3 rounds" in captured.err and "probe gave up" in captured.err
    assert "kernel CPU" not in captured.out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is glibc's")
def test_allocator_bench_measures_at_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert script("allocator_bench").main(["--rounds", "1", "--block-mb", "1", "--blocks", "1"]) == 0
    assert capsys.readouterr().out.count("kernel CPU for 1 rounds of 1 MB") == 2


# benchmarks/gpu_prep.py and gpu_train.sh


@pytest.fixture
def gpu_prep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """gpu_prep with tmp_path as the repository root, every wanted wheel in place and real samples to copy."""
    import importlib.metadata

    module = script("gpu_prep")
    monkeypatch.setattr(module, "REPO", tmp_path / "repo")
    wheels = tmp_path / "repo" / "build" / "wheels"
    wheels.mkdir(parents=True)
    for name in module.MISSING_ON_DEVICE:
        (wheels / f"{module.normalise(name)}-{importlib.metadata.version(name)}-py3-none-any.whl").write_bytes(b"w")
    real = tmp_path / "real"
    real.mkdir()
    for name in module.REAL_FILES:
        (real / name).write_bytes(name.encode())
    return module


@pytest.mark.parametrize("option", ["--wheels", "--real-to"])
def test_gpu_prep_refuses_folders_outside_the_repository(gpu_prep: Any, tmp_path: Path, option: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "elsewhere"
    line = refused(gpu_prep.main, ["--dry-run", "--real-from", str(tmp_path / "real"), option, str(outside)], capsys)
    assert f"{option} {outside} is not inside the repository" in line
    assert not outside.exists()


def test_gpu_prep_prints_repository_paths_and_the_wheels_folder_for_the_device(
        gpu_prep: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path / "repo")  # relative folders are the current folder's
    assert gpu_prep.main(["--wheels", "build/wheels", "--real-from", str(tmp_path / "real"),
                          "--real-to", "build/realcopy"]) == 0
    out = capsys.readouterr().out
    assert "carry=['build/wheels', 'build/realcopy']" in out
    assert "WHEELS=build/wheels REAL=build/realcopy" in out
    assert sorted(p.name for p in (tmp_path / "repo" / "build" / "realcopy").iterdir()) == sorted(gpu_prep.REAL_FILES)


def test_gpu_prep_names_no_wheels_folder_for_the_default_one(gpu_prep: Any) -> None:
    assert "WHEELS" not in gpu_prep.device_call(wheels=".whl", real=".real")
    assert "carry=['.whl']" in gpu_prep.device_call(wheels=".whl", real=None)


@pytest.fixture
def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """A python that has no segmentation_models_pytorch and logs what it is asked; it fails at everything."""
    log = tmp_path / "python.log"
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexit 1\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return python, log


def run_gpu_train(python: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(BENCHMARKS / "gpu_train.sh")], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHON": str(python), "DEVICE": "cpu", "SKIP_REAL": "1",
                                           "OUT": str(out), **env})


def test_gpu_train_installs_the_wheels_of_the_folder_wheels_names(tmp_path: Path,
                                                                  fake_python: tuple[Path, Path]) -> None:
    python, log = fake_python
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_gpu_train(python, tmp_path / "out", WHEELS=str(empty))
    assert done.returncode == 2 and f"WHEELS={empty} holds no wheel" in done.stderr
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "smp-1-py3-none-any.whl").write_bytes(b"")
    done = run_gpu_train(python, tmp_path / "out", WHEELS=str(wheels))
    assert done.returncode != 0  # the fake's pip fails too
    assert f"--target /tmp/site {wheels}/smp-1-py3-none-any.whl" in log.read_text()


# --json and the other options of the quality benchmarks


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: the options must be refused before it."""
    from am.model.predict import Predictor

    def loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(Predictor, "from_checkpoint", loading)


@pytest.mark.parametrize("name", ["model_quality", "postprocess_sweep", "model_by_style"])
def test_a_bad_json_path_is_refused_before_any_work(name: str, tmp_path: Path, no_model: None,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert f"--json: {tmp_path} is a folder; give a file path" in refused(script(name).main, ["--json", str(tmp_path)],
                                                                          capsys)
    (tmp_path / "file").write_text("")
    assert "is a file, so" in refused(script(name).main, ["--json", str(tmp_path / "file" / "out.json")], capsys)


def test_model_quality_refuses_a_file_for_its_overlays(tmp_path: Path, no_model: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    line = refused(script("model_quality").main, ["--skip-real", "--overlays", str(tmp_path / "file")], capsys)
    assert "--overlays: " in line and "give a folder path" in line


@pytest.mark.parametrize("name", ["model_quality", "postprocess_sweep", "model_by_style", "model_cpu_bench"])
def test_more_threads_than_cpus_are_refused(name: str, no_model: None, capsys: pytest.CaptureFixture[str]) -> None:
    threads = str((os.cpu_count() or 1) + 1)
    assert f"--threads {threads}: this machine has" in refused(script(name).main, ["--threads", threads], capsys)


def test_model_quality_writes_its_json_into_a_new_folder(tmp_path: Path, tiny_model: Path) -> None:
    target = tmp_path / "new" / "quality.json"
    assert script("model_quality").main(["--model", str(tiny_model), "--synthetic", "1", "--skip-real",
                                         "--threads", "1", "--precision", "fp32", "--worst", "0",
                                         "--json", str(target)]) == 0
    assert json.loads(target.read_text())["precision"] == "fp32"
    assert [p.name for p in target.parent.iterdir()] == ["quality.json"]


@pytest.mark.parametrize("repeats", ["0", "-3"])
def test_model_cpu_bench_refuses_fewer_than_one_repeat(repeats: str, no_model: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert f"--repeats {repeats}: give at least 1" in refused(script("model_cpu_bench").main, ["--repeats", repeats],
                                                              capsys)


# benchmarks/evaluate_bench.py and register_bench.py


def test_evaluate_bench_reports_the_process_peak_memory(capsys: pytest.CaptureFixture[str]) -> None:
    bench = script("evaluate_bench")
    assert bench.main(["--size", "200", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["process_peak_rss_mib"] > 0
    assert bench.main(["--size", "200"]) == 0
    assert "peak RSS of the process" in capsys.readouterr().out


def test_register_bench_labels_its_memory_as_the_peak_so_far(capsys: pytest.CaptureFixture[str]) -> None:
    bench = script("register_bench")
    assert bench.main(["--scenarios", "mild", "--seeds", "1", "--no-large", "--no-original"]) == 0
    out = capsys.readouterr().out
    assert "RSS MiB" in out and "peak RSS so far" in out and "RSS MB" not in out


# examples/sagemaker_batch_transform.py


@pytest.fixture
def example() -> Any:
    return load_script(REPO / "examples" / "sagemaker_batch_transform.py")


EXAMPLE_ARGS = ["--image-uri", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/am-segm-serve:latest",
                "--model-data", "s3://b/models/model.tar.gz", "--role-arn", "arn:aws:iam::123456789012:role/R",
                "--input", "s3://b/in/", "--output", "s3://b/out/", "--model-name", "m", "--job-name", "j"]


class RefusingSageMaker:
    """describe_model answers as SageMaker does to a caller without the permission."""

    def describe_model(self, ModelName: str) -> None:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "AccessDeniedException",
                                     "Message": "User: u is not authorized to perform: sagemaker:DescribeModel"}},
                          "DescribeModel")


def aws_failure(example: Any, argv: list[str], capsys: pytest.CaptureFixture[str], **kwargs: Any) -> str:
    assert example.main(argv, **kwargs) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if " ERROR " in line]
    assert len(lines) == 1, err
    return lines[0]


def test_example_says_in_one_line_that_aws_refused(example: Any, capsys: pytest.CaptureFixture[str]) -> None:
    line = aws_failure(example, EXAMPLE_ARGS, capsys, client=RefusingSageMaker())
    assert "SageMaker refused DescribeModel: AccessDeniedException: User: u is not authorized" in line
    assert "IAM policy" in line


def test_example_says_in_one_line_that_no_region_is_set(example: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert "no AWS region is configured: give --region" in aws_failure(example, EXAMPLE_ARGS, capsys)


def test_example_says_in_one_line_that_no_credentials_are_found(example: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    line = aws_failure(example, [*EXAMPLE_ARGS, "--region", "eu-west-1"], capsys)
    assert "no AWS credentials found" in line


@pytest.mark.parametrize("option", ["--timeout-s", "--poll-s"])
@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_example_refuses_seconds_that_are_not_finite_and_positive(example: Any, option: str, value: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(example.main, [*EXAMPLE_ARGS, option, value], capsys)
    assert f"{option} {float(value)}: give a finite number of seconds > 0" in line


def test_example_help_states_each_default_once(example: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        example.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and text.count("(default: am-segm-<time>)") == 2
    assert "(default ml.g4dn.xlarge)" in text and "(default 21600, 6 hours)" in text


# benchmarks/register_fuzz.py


def test_register_fuzz_sorts_every_grid_and_counts_them(capsys: pytest.CaptureFixture[str]) -> None:
    fuzz = script("register_fuzz")
    assert fuzz.main(["uneven_small", "--count", "3", "--start", "1", "--jobs", "1", "--json"]) == 0
    assert logging.root.manager.disable == logging.NOTSET  # quiet in its own processes, not in its caller
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    summary = lines[-1]
    assert summary["family"] == "uneven_small" and summary["grids"] == 3 and summary["seeds"] == [1, 3]
    assert sum(n for key, n in summary.items() if key not in ("family", "grids", "seeds")) == 3
    assert all(line["result"] != "ok" and 3 <= line["rows"] <= 5 for line in lines[:-1])
    drawn, rows, cols, params = draw_fuzz_case("even", 7)
    assert drawn.mask.shape == drawn.truth.shape and 3 <= rows <= 50 and 3 <= cols <= 50 and params["seed"] == 7
    with pytest.raises(ValueError, match="unknown grid family 'uneven'"):
        draw_fuzz_case("uneven", 7)


def test_register_fuzz_refuses_a_count_of_none(capsys: pytest.CaptureFixture[str]) -> None:
    assert refused(script("register_fuzz").main, ["even", "--count", "0"], capsys).endswith(
        "--count and --jobs must be >= 1")
