"""Option values that would exhaust the machine, act on everything, run forever or read and write the
current folder are refused as usage errors (exit 2) before any work, naming the option and the value."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest

import am.bench.__main__ as bench_cli
import am.evaluate.__main__ as evaluate_cli
import am.train.__main__ as train_cli
from am.api.__main__ import MAX_CONCURRENCY
from am.cli import device_option, path_option, text_option
from am.errors import InputError
from am.evaluate.lost import lost_marks
from am.evaluate.metrics import score
from am.evaluate.run import ImageResult
from am.model.build import TEST_DECODER_CHANNELS, TEST_ENCODER

CPUS = os.cpu_count() or 1
TINY_TRAIN = ["--encoder", TEST_ENCODER, "--decoder-channels", ",".join(map(str, TEST_DECODER_CHANNELS)),
              "--crop", "64", "--batch-size", "2", "--device", "cpu", "--threads", "1", "--synthetic", "2",
              "--synthetic-valid", "1"]


def _usage_error(module: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``module``'s main(argv) in process, expect exit 2 and return what it wrote to stderr."""
    main = importlib.import_module(module).main
    try:
        code = main(argv)
    except SystemExit as stopped:
        code = stopped.code
    assert code == 2, f"{module} {argv} exited {code}"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_train_refuses_more_workers_than_cpus(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_cli, "synthetic_images", lambda **kwargs: pytest.fail("images were rendered"))
    err = _usage_error("am.train.__main__", ["--out", str(tmp_path / "m.pt"), *TINY_TRAIN, "--workers", "99999"],
                       capsys)
    assert f"--workers 99999: this machine has {CPUS} CPUs; give 0 (in process) to {CPUS}" in err
    assert list(tmp_path.iterdir()) == []
    err = _usage_error("am.train.__main__", ["--out", str(tmp_path / "m.pt"), *TINY_TRAIN, "--workers", str(CPUS + 1)],
                       capsys)
    assert f"--workers {CPUS + 1}: this machine has {CPUS} CPUs" in err
    assert f"{CPUS} here" in train_cli.parser().format_help()


# (module, the arguments with {} where the empty value goes, the option argparse names)
EMPTY_PATHS = [
    ("am.synth.__main__", ["dataset", "{}", "--rows", "3", "--cols", "3"], "dir"),
    ("am.synth.__main__", ["tiles", "{}", "--count", "1"], "dir"),
    ("am.pseudolabel.__main__", ["image.png", "--labels", "labels", "--out", "{}"], "--out"),
    ("am.pseudolabel.__main__", ["image.png", "--labels", "{}", "--out", "out"], "--labels"),
    ("am.pseudolabel.__main__", ["{}", "--labels", "labels", "--out", "out"], "image"),
    ("am.train.__main__", ["--synthetic", "2", "--out", "{}"], "--out"),
    ("am.train.__main__", ["--out", "m.pt", "--data", "{}"], "--data"),
    ("am.train.__main__", ["--out", "m.pt", "--synthetic", "2", "--init", "{}"], "--init"),
    ("am.evaluate.__main__", ["--synthetic", "1", "--model", "{}"], "--model"),
    ("am.evaluate.__main__", ["--data", "{}"], "--data"),
    ("am.evaluate.__main__", ["--images", "{}", "--masks", "masks"], "--images"),
    ("am.evaluate.__main__", ["--images", "images", "--masks", "{}"], "--masks"),
    ("am.evaluate.__main__", ["--synthetic", "1", "--json", "{}"], "--json"),
    ("am.evaluate.__main__", ["--synthetic", "1", "--side-by-side", "{}"], "--side-by-side"),
    ("am.bench.__main__", ["--checkpoint", "{}"], "--checkpoint"),
    ("am.bench.__main__", ["--pipeline-image", "{}"], "--pipeline-image"),
    ("am.bench.__main__", ["--encoder", "{}"], "--encoder"),
    ("am.train.__main__", ["--out", "m.pt", "--synthetic", "2", "--device", "{}"], "--device"),
    ("am.api.__main__", ["--data-dir", "{}"], "--data-dir"),
    ("am.api.__main__", ["--config", "{}"], "--config"),
    ("am.api.__main__", ["--model", "{}"], "--model"),
    ("am.scale.__main__", ["--config", "{}", "status"], "--config"),
    ("am.scale.__main__", ["redrive", "--job", "{}"], "--job"),
    ("am.pipeline.__main__", ["{}", "--rows", "2", "--cols", "2"], "dataset"),
    ("am.register.__main__", ["{}"], "DATASET"),
    ("am.serve.__main__", ["serve", "--model-dir", "{}"], "--model-dir"),
    ("am.train.mine", ["--out", "{}"], "--out"),
    ("am.train.mine", ["--out", "hard", "--model", "{}"], "--model"),
]


@pytest.mark.parametrize("value", ["", "  "])
@pytest.mark.parametrize(("module", "argv", "option"), EMPTY_PATHS,
                         ids=[f"{m.split('.')[1]}:{o}" for m, _, o in EMPTY_PATHS])
def test_an_empty_path_or_name_is_a_usage_error(module: str, argv: list[str], option: str, value: str,
                                                tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    err = _usage_error(module, [value if word == "{}" else word for word in argv], capsys)
    assert f"argument {option}: {value!r} is empty" in err or f"argument {option}: {value!r} is an empty path" in err
    assert list(tmp_path.iterdir()) == [], "nothing is written in the current folder"


def test_the_shared_types_keep_a_real_value() -> None:
    assert path_option("out") == Path("out") and text_option("j1") == "j1"
    assert device_option("cpu") == "cpu" and device_option("cpu:0") == "cpu:0" and device_option("cuda:1") == "cuda:1"


def test_redrive_says_an_empty_job_would_move_every_job(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error("am.scale.__main__", ["redrive", "--job", "", "--dry-run"], capsys)
    assert "every job" in err and "leave --job out" in err


@pytest.mark.parametrize("value", ["0", str(MAX_CONCURRENCY + 1), "100000", "99999999999999999999"])
def test_api_concurrency_is_bounded(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    err = _usage_error("am.api.__main__", ["--concurrency", value], capsys)
    assert f"--concurrency {value}: give a number of tasks from 1 to {MAX_CONCURRENCY}" in err
    assert list(tmp_path.iterdir()) == []


def test_api_help_says_the_concurrency_bound() -> None:
    from am.api.__main__ import build_parser

    assert f"1 to {MAX_CONCURRENCY}" in " ".join(build_parser().format_help().split())


@pytest.mark.parametrize("value", ["-1", str(evaluate_cli.MAX_SYNTHETIC + 1), "99999999999999999999"])
def test_evaluate_synthetic_is_a_count_within_bounds(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error("am.evaluate.__main__", ["--synthetic", value], capsys)
    assert f"--synthetic {value} is not a number of images from 0 (none) to {evaluate_cli.MAX_SYNTHETIC}" in err


def test_evaluate_synthetic_0_alone_says_it_draws_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    # 0 is "none" beside another source (a wrapper may always pass it); alone there is nothing to score.
    err = _usage_error("am.evaluate.__main__", ["--synthetic", "0"], capsys)
    assert "--synthetic 0 draws no images: give N of at least 1, --data or --images/--masks" in err


def test_evaluate_min_object_px_is_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error("am.evaluate.__main__", ["--synthetic", "1", "--min-object-px", "99999999999999999999"],
                       capsys)
    assert (f"--min-object-px 99999999999999999999: give a size in px of at most {evaluate_cli.MAX_MIN_OBJECT_PX}"
            in err)
    help_text = " ".join(evaluate_cli.parser().format_help().split())
    assert f"0 to {evaluate_cli.MAX_MIN_OBJECT_PX}" in help_text
    assert f"0 (none) to {evaluate_cli.MAX_SYNTHETIC}" in help_text


def test_evaluate_says_when_min_object_px_left_every_mark_uncounted() -> None:
    truth = np.zeros((64, 64), bool)
    truth[10:20, 10:20] = True  # one mark of 100 px
    predicted = truth.copy()

    def result(min_object_px: int) -> ImageResult:
        return ImageResult("a", score(truth, predicted, min_object_px=min_object_px), None,
                           lost_marks(truth, predicted, min_object_px=min_object_px))

    warning = evaluate_cli.uncounted_marks_warning([result(101)], 101)
    assert warning is not None and "--min-object-px 101 left every true mark out" in warning
    assert evaluate_cli.uncounted_marks_warning([result(100)], 100) is None
    assert evaluate_cli.uncounted_marks_warning([result(0)], 0) is None


@pytest.mark.parametrize(("device", "said"), [("cpu:1", "torch has one CPU device"), ("", "is empty"),
                                              (" ", "is empty")])
def test_evaluate_refuses_a_cpu_index_and_an_empty_device(device: str, said: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error("am.evaluate.__main__", ["--synthetic", "1", "--device", device], capsys)
    assert f"argument --device: {device!r}" in err and said in err


def test_bench_refuses_more_threads_than_cpus(capsys: pytest.CaptureFixture[str]) -> None:
    err = _usage_error("am.bench.__main__", ["--threads", str(CPUS + 1), "--no-loop"], capsys)
    assert f"--threads {CPUS + 1}: this machine has {CPUS} CPUs" in err


@pytest.mark.parametrize(("name", "content"), [("notes.tif", b"not an image\n"), ("notes.txt", b"text\n"),
                                               ("missing.png", None)])
def test_bench_checks_the_pipeline_image_before_measuring(name: str, content: bytes | None, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / name
    if content is not None:
        image.write_bytes(content)
    monkeypatch.setattr(bench_cli, "run", lambda args: pytest.fail("the model was measured first"))
    with pytest.raises(InputError) as refused:
        bench_cli.main(["--device", "cpu", "--no-loop", "--pipeline-image", str(image)])
    assert str(refused.value).startswith(f"--pipeline-image {image}: image {image} ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ([name] if content is not None else [])
