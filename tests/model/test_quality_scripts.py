"""The model benchmarks run at the precision they are told and say which one they ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from am.model.predict import cpu_multiplies_bf16
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_bench_runs_and_names_the_precision(tiny_model: Path, precision: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_script(REPO / "benchmarks" / "model_cpu_bench.py")
    assert bench.main(["--model", str(tiny_model), "--threads", "1", "--repeats", "1", "--precision", precision]) == 0
    out = capsys.readouterr().out
    assert f", {precision}, test-time augmentation off" in out
    assert "batch 1:" in out and "batch 4:" in out and "target <= 250 ms per tile" in out


def test_cpu_bench_refuses_fp16(tiny_model: Path) -> None:
    bench = load_script(REPO / "benchmarks" / "model_cpu_bench.py")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--model", str(tiny_model), "--precision", "fp16"])
    assert exit_info.value.code == 2


def test_quality_report_records_the_precision_auto_chose(tiny_model: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    quality = load_script(REPO / "benchmarks" / "model_quality.py")
    figures = tmp_path / "figures.json"
    assert quality.main(["--model", str(tiny_model), "--synthetic", "1", "--threads", "1",
                         "--real", str(tmp_path / "absent"), "--json", str(figures)]) == 0
    chosen = "bf16" if cpu_multiplies_bf16() else "fp32"
    report = json.loads(figures.read_text())
    assert report["precision"] == chosen and report["synthetic"]["images"] == 1
    assert f"({report['encoder']}), {chosen}, test-time augmentation off" in capsys.readouterr().out
