"""The model benchmarks run at the precision they are told, say which one they ran, and where the error lies."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from am.evaluate.heldout import HELD_OUT_PITCH, HELD_OUT_SEED, HELD_OUT_SIZE, held_out_images, held_out_style
from am.evaluate.metrics import Scores
from am.model.precision import cpu_multiplies_bf16
from am.synth.dataset import sample_at
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
                         "--skip-real", "--json", str(figures)]) == 0
    chosen = "bf16" if cpu_multiplies_bf16() else "fp32"
    report = json.loads(figures.read_text())
    assert report["precision"] == chosen and report["synthetic"]["images"] == 1
    assert f"({report['encoder']}), {chosen}, test-time augmentation off" in capsys.readouterr().out


def test_quality_report_lists_the_images_holding_most_of_the_error(tiny_model: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    quality = load_script(REPO / "benchmarks" / "model_quality.py")
    figures = tmp_path / "figures.json"
    assert quality.main(["--model", str(tiny_model), "--synthetic", "3", "--threads", "1", "--worst", "2",
                         "--skip-real", "--json", str(figures)]) == 0
    out = capsys.readouterr().out
    assert "where the error lies: 2 of 3 images hold" in out
    edges = json.loads(figures.read_text())["synthetic"]["edges"]
    assert edges["missed_px"] + edges["extra_px"] == edges["near_edge_px"] <= edges["wrong_px"]
    assert f"{edges['missed_px']} missed, {edges['extra_px']} drawn too many" in out
    synthetic = json.loads(figures.read_text())["synthetic"]
    lost = synthetic["lost"]
    assert sum(lost.values()) == synthetic["lost_objects"]
    assert f"marks lost: {lost['missed']} missed, {lost['merged']} merged with a neighbour" in out
    # Each image's counts, pooling to the reported figures, for compare_quality.py's paired bootstrap.
    assert synthetic["seed"] == HELD_OUT_SEED and len(synthetic["per_image"]) == 3
    assert Scores(*(sum(column) for column in zip(*synthetic["per_image"], strict=True))).f1 == synthetic["f1"]
    worst = json.loads(figures.read_text())["synthetic"]["worst"]
    assert len(worst) == 2 and worst[0]["wrong_px"] >= worst[1]["wrong_px"]
    for row in worst:
        style = held_out_style(row["image"])
        assert f"image {row['image']}: " in out and row["style"].startswith(f"{style.polarity} {style.shape} marks")


def test_held_out_style_is_the_style_the_image_was_drawn_in() -> None:
    image = held_out_images(3)[2]
    again = sample_at(HELD_OUT_SEED, 2, size=HELD_OUT_SIZE, pitch_range=HELD_OUT_PITCH)
    assert np.array_equal(image.image, again.image) and again.style == held_out_style(2)


def test_evaluate_bench_accounts_for_every_lost_mark(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_script(REPO / "benchmarks" / "evaluate_bench.py")
    assert bench.main(["--size", "600", "--pitch", "20", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["true_marks"] == 29 * 29 and figures["account_adds_up"] is True
    lost = figures["lost"]
    assert min(lost["missed"], lost["merged"], lost["too_small"], lost["too_large"]) > 0
    assert figures["score_s"] >= 0 and figures["account_s"] >= 0


def test_evaluate_bench_refuses_a_mask_smaller_than_two_pitches() -> None:
    bench = load_script(REPO / "benchmarks" / "evaluate_bench.py")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--size", "50", "--pitch", "40"])
    assert exit_info.value.code == 2


def test_quality_report_refuses_a_real_folder_that_does_not_exist(tiny_model: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    quality = load_script(REPO / "benchmarks" / "model_quality.py")
    typo = tmp_path / "reall"
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--model", str(tiny_model), "--synthetic", "0", "--real", str(typo)])
    assert exit_info.value.code == 2 and f"--real {typo} does not exist" in capsys.readouterr().err


def test_quality_report_skips_the_real_samples_only_where_the_default_folder_is_missing(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    quality = load_script(REPO / "benchmarks" / "model_quality.py")
    monkeypatch.setattr(quality, "REAL", tmp_path / "shared" / "data" / "real")
    assert quality.main(["--model", str(tiny_model), "--synthetic", "0", "--threads", "1"]) == 0
    assert f"real samples not found at {tmp_path / 'shared' / 'data' / 'real'}; skipped" in capsys.readouterr().out


def test_postprocess_timing_lists_the_slowest_images(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    timing = load_script(REPO / "benchmarks" / "postprocess_time.py")
    opencv_threads = cv2.getNumThreads()
    assert timing.main(["--model", str(tiny_model), "--images", "2", "--threads", "1", "--worst", "2",
                        "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "post-processing of 2 images of 512 px (seed 1000, OpenCV on 1 thread, best of 2 runs): total" in out
    assert out.count("  image ") == 2
    assert cv2.getNumThreads() == opencv_threads, "OpenCV's threads are restored after the timing"


@pytest.mark.parametrize("option", ["--images", "--repeats"])
def test_postprocess_timing_refuses_no_images_or_runs(tiny_model: Path, option: str) -> None:
    timing = load_script(REPO / "benchmarks" / "postprocess_time.py")
    with pytest.raises(SystemExit) as exit_info:
        timing.main(["--model", str(tiny_model), option, "0"])
    assert exit_info.value.code == 2


def test_encoder_survey_measures_each_encoder_as_training_would_save_it(capsys: pytest.CaptureFixture[str]) -> None:
    survey = load_script(REPO / "benchmarks" / "encoder_survey.py")
    assert survey.main(["--encoders", "tu-mobilenetv3_small_100", "--decoder-channels", "32,16,8,8,4",
                        "--threads", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| tu-mobilenetv3_small_100 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    params_m = float(cells[1].removesuffix(" M"))
    fp16_mb, int8_mb = (float(mb) for mb in cells[2].removesuffix(" MB").split(" / "))
    assert 0.5 < params_m < 2.0, "MobileNetV3-small with a narrow decoder has about a million parameters"
    assert fp16_mb == pytest.approx(params_m * 2, rel=0.15), "stored in fp16: two bytes a parameter"
    assert int8_mb < 0.65 * fp16_mb, "in int8 the convolutions take a byte a weight"
    batch1, batch4 = (float(ms) for ms in cells[4].split(" / "))
    assert batch1 > 0 and batch4 > 0
    assert cells[5] == "yes / yes"
    assert logging.getLogger("am.model.predict").level == logging.NOTSET, "the survey leaves logging as it was"
    assert out.rstrip().endswith("fit both limits in fp16: tu-mobilenetv3_small_100\n"
                                 "fit both limits in int8: tu-mobilenetv3_small_100")


def test_encoder_survey_fits_only_within_both_limits() -> None:
    survey = load_script(REPO / "benchmarks" / "encoder_survey.py")
    figures = survey.EncoderFigures
    small = figures("a", params_m=4.5, size_mb=9.3, int8_size_mb=4.8, gflop=9.4, batch1_ms=98.0, batch4_ms=74.0)
    assert small.fits("fp16") and small.fits("int8")
    bigger = figures("b", params_m=12.5, size_mb=25.0, int8_size_mb=12.7, gflop=26.3, batch1_ms=156.0,
                     batch4_ms=146.0)
    assert not bigger.fits("fp16") and bigger.fits("int8")
    slow = figures("c", params_m=4.5, size_mb=9.3, int8_size_mb=4.8, gflop=9.4, batch1_ms=98.0, batch4_ms=240.0)
    assert not slow.fits("fp16") and not slow.fits("int8"), "post-processing's time counts against the 250 ms"


@pytest.mark.parametrize(("option", "value", "named"), [("--encoders", "resnet18,no_such_net", "no_such_net"),
                                                        ("--decoder-channels", "64,32", "64,32")])
def test_encoder_survey_refuses_unknown_encoders_and_odd_decoders(option: str, value: str, named: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    survey = load_script(REPO / "benchmarks" / "encoder_survey.py")
    with pytest.raises(SystemExit) as exit_info:
        survey.main([option, value])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
