"""The prepared GPU training check runs end to end (on the CPU, at toy size): the script is
time-boxed for short GPU runs, which leave no minutes to spare on a broken script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


TOY = {"DEVICE": "cpu", "PYTHON": sys.executable, "SYNTHETIC": "2", "VALID": "1", "EPOCHS": "1", "STEPS": "1",
       "BATCH": "2", "CROP": "64", "COMPACT_EPOCHS": "1", "COMPACT_STEPS": "1", "QUALITY_SYNTHETIC": "1",
       "WORKERS": "0", "SKIP_REAL": "1"}


# What a device call brings back of its $OUT (the device tool's limits).
RETURNED_FILES, RETURNED_FILE_BYTES = 8, 16 * 2**20


def run_script(out: Path, timeout: int = 600, **env: str | None) -> subprocess.CompletedProcess:
    """Runs the script at toy size; a variable given as None is left unset (the script's default)."""
    full = {**os.environ, **TOY, "OUT": str(out), **env}
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_train.sh")], cwd=REPO,
                          env={k: v for k, v in full.items() if v is not None}, capture_output=True, text=True,
                          timeout=timeout)


def returned(results: Path) -> dict[str, int]:
    """The files of RESULTS by size, checked against what a device call brings back."""
    files = {p.relative_to(results).as_posix(): p.stat().st_size for p in results.rglob("*") if p.is_file()}
    assert len(files) <= RETURNED_FILES, files
    assert all(size <= RETURNED_FILE_BYTES for size in files.values()), files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in files), files
    return files


def packed(results: Path) -> list[str]:
    with tarfile.open(results / "results.tgz") as archive:
        return sorted(archive.getnames())


def sleeping_watchdogs(seconds: str) -> list[str]:
    """Processes still running ``sleep SECONDS``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[:2] == [b"sleep", seconds.encode()]:
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found


def test_gpu_script_trains_both_models_and_compares_them_with_the_shipped_one(tmp_path):
    done = run_script(tmp_path, BENCH="1", BENCH_BATCH="2", BENCH_TILES="2", WATCHDOG_S="5871")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not sleeping_watchdogs("5871"), "a watchdog outlived the runs it watched"
    assert "resnext50: training wall time" in done.stdout and "compact: training wall time" in done.stdout
    assert "real samples skipped" in done.stdout
    speed = json.loads((tmp_path / "bench.json").read_text())
    assert speed["encoder"] == "resnext50_32x4d" and speed["model_tiles_per_s"] > 0 and speed["trained"]
    encoders = {}
    for name in ("shipped", "resnext50", "compact"):
        quality = json.loads((tmp_path / f"{name}.quality.json").read_text())
        assert quality["precision"] == "fp32" and 0.0 <= quality["synthetic"]["dice_pooled"] <= 1.0
        encoders[name] = quality["encoder"]
    assert encoders["resnext50"] == "resnext50_32x4d"
    assert encoders["compact"] == encoders["shipped"] != "resnext50_32x4d"
    for name in ("resnext50", "compact"):
        assert (tmp_path / f"{name}.metrics.csv").is_file()
    assert "starting from the weights of am/models/default.pt" in (tmp_path / "compact.train.log").read_text()
    options = json.loads((tmp_path / "compact.metrics.json").read_text())["options"]
    assert options["data"]["synthetic_labels"] == "margin" and options["data"]["synthetic_blobs"] == 3
    comparison = (tmp_path / "comparison.md").read_text()
    assert comparison.splitlines()[0] == "| figure | shipped | resnext50 | compact |"
    assert comparison in done.stdout


def test_gpu_script_measures_the_run_that_worked_when_the_other_fails(tmp_path):
    done = run_script(tmp_path, COMPACT_LR="-1", SHIPPED="0")
    assert done.returncode == 1
    assert "compact: training failed" in done.stderr and (tmp_path / "compact.train.log").is_file()
    assert json.loads((tmp_path / "resnext50.quality.json").read_text())["encoder"] == "resnext50_32x4d"
    assert (tmp_path / "comparison.md").read_text().splitlines()[0] == "| figure | resnext50 |"


def test_gpu_script_reports_a_failed_training_run(tmp_path):
    done = run_script(tmp_path / "out", BATCH="0", COMPACT="0", SHIPPED="0", RESULTS=str(tmp_path / "results"))
    assert done.returncode == 1, "the script's own status, not that of packing the results"
    assert "resnext50: training failed" in done.stderr and (tmp_path / "out" / "resnext50.train.log").is_file()
    assert not (tmp_path / "out" / "comparison.md").exists()
    # The failed run's log comes back all the same.
    assert list(returned(tmp_path / "results")) == ["results.tgz"]
    assert "resnext50.train.log" in packed(tmp_path / "results")
    assert f"results: packed into {tmp_path / 'results'}: results.tgz (" in done.stdout


def test_gpu_script_sizes_its_schedules_to_minutes_and_packs_what_a_device_call_brings_back(tmp_path):
    # EPOCHS and COMPACT_EPOCHS unset: 4 per minute and 20 per 6 minutes of MINUTES, rounded down. A
    # deadline shortens the default watchdog (MINUTES + 150 s = 180 s) to leave measuring 150 s and the
    # bench 70 s; the bench, given 1 s, fails.
    out, results = tmp_path / "out", tmp_path / "results"
    done = run_script(out, MINUTES="0.5", EPOCHS=None, COMPACT_EPOCHS=None, SHIPPED="0", RESULTS=str(results),
                      DEADLINE_S="400", BENCH="1", BENCH_TIMEOUT_S="1")
    assert done.returncode == 0, done.stdout + done.stderr
    for name, epochs in (("resnext50", 2), ("compact", 1)):
        assert json.loads((out / f"{name}.metrics.json").read_text())["options"]["epochs"] == epochs, name
        watchdog = re.search(rf"^{name}: watchdog at (\d+) s", done.stdout, re.MULTILINE)
        assert watchdog and 120 <= int(watchdog[1]) < 180, done.stdout
    assert "WARNING: the speed benchmark was stopped after its 1 s timeout, so there is no bench.json" in done.stderr
    assert not (out / "bench.json").exists() and (out / "bench.log").is_file()
    # resnext50.pt (64 MB) and the resume states (hundreds of MB) stay behind; the rest comes back.
    files = returned(results)
    assert sorted(files) == ["compact.pt", "comparison.md", "results.tgz"]
    assert (results / "compact.pt").read_bytes() == (out / "compact.pt").read_bytes()
    assert (results / "comparison.md").read_text() == (out / "comparison.md").read_text()
    names = packed(results)
    for name in ("resnext50", "compact"):
        for suffix in ("metrics.csv", "metrics.json", "train.log", "quality.json", "quality.log"):
            assert f"{name}.{suffix}" in names
    assert "comparison.md" in names and "bench.log" in names
    assert not [name for name in names if not name.endswith((".json", ".csv", ".log", ".md"))], names
    assert (out / "resnext50.pt").is_file()
    assert done.stdout.count("results: packed into") == 1


def test_gpu_script_stops_an_overrunning_training_and_still_measures_its_best_checkpoint(tmp_path):
    # 200 one-step epochs outlast a 25 s watchdog, as a run stalled inside an epoch would outlast MINUTES.
    # A deadline already past leaves a shorter WATCHDOG_S as it is, and no time for the bench.
    done = run_script(tmp_path, EPOCHS="200", WATCHDOG_S="25", COMPACT="0", SHIPPED="0", DEADLINE_S="1", BENCH="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resnext50: training outlived the 25 s watchdog and was stopped" in done.stderr
    assert "WARNING: the speed benchmark skipped for lack of time" in done.stderr
    assert not (tmp_path / "bench.json").exists() and not (tmp_path / "bench.log").exists()
    log = (tmp_path / "resnext50.train.log").read_text()
    assert "most recent call first" in log, "the watchdog asks for every thread's stack before stopping the run"
    quality = json.loads((tmp_path / "resnext50.quality.json").read_text())
    assert quality["encoder"] == "resnext50_32x4d"
    assert 1 <= len(json.loads((tmp_path / "resnext50.metrics.json").read_text())["history"]) < 200
    assert not (tmp_path / ".resnext50.watchdog-fired").exists()


def test_gpu_script_never_measures_an_earlier_sessions_checkpoint_as_this_runs(tmp_path):
    from am.model.build import write_untrained_checkpoint

    # An earlier session left its outputs under the run's name; this session's run is stopped before
    # its first epoch ends, so it saves nothing, and nothing is measured.
    old = write_untrained_checkpoint(tmp_path / "resnext50.pt", encoder="resnet18").read_bytes()
    (tmp_path / "resnext50.metrics.json").write_text("{}")
    (tmp_path / "resnext50.quality.json").write_text("{}")
    (tmp_path / "comparison.md").write_text("an earlier table")
    done = run_script(tmp_path, EPOCHS="200", WATCHDOG_S="1", COMPACT="0", SHIPPED="0", BENCH="1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "resnext50: training outlived the 1 s watchdog before any epoch saved a checkpoint" in done.stderr
    assert "nothing of this run to measure" in done.stderr and "measuring the best checkpoint" not in done.stderr
    assert "moved an earlier session's resnext50.pt resnext50.metrics.json resnext50.quality.json" in done.stdout
    for name in ("resnext50.pt", "resnext50.quality.json", "comparison.md", "bench.json"):
        assert not (tmp_path / name).exists(), name
    assert (tmp_path / "previous" / "resnext50.pt").read_bytes() == old


def test_gpu_script_refuses_a_compact_start_that_is_not_a_checkpoint(tmp_path):
    done = run_script(tmp_path / "out", COMPACT_INIT=str(tmp_path / "nothing.pt"), timeout=120)
    assert done.returncode == 2 and "COMPACT_INIT=" in done.stderr and "COMPACT_INIT=none" in done.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_script_stops_before_training_when_the_real_samples_are_missing(tmp_path):
    missing = tmp_path / "no-real-samples"
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "REAL": str(missing)}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_train.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"REAL={missing}" in done.stderr and "SKIP_REAL=1" in done.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_model_target_can_use_the_machines_own_python_without_a_venv():
    # As from a user's shell: under `make test` the inherited MAKELEVEL adds "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    plan = subprocess.run(["make", "--no-print-directory", "-n", "gpu-model", "AM_SYSTEM_PYTHON=1",
                           "PYTHON=/opt/gpu/bin/python3"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert plan.strip() == "PYTHON=/opt/gpu/bin/python3 bash benchmarks/gpu_train.sh"
    assert "venv" not in plan and "pip" not in plan


def test_real_samples_and_wheels_copied_into_the_checkout_are_ignored_by_git():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", ".real/crop1.png", ".whl/smp.whl"], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=False).stdout.split()
    assert ignored == [".real/crop1.png", ".whl/smp.whl"]
