"""am.train refuses what cannot work before it reads or renders any image: an --init checkpoint of
another architecture, and numbers that are not finite where a finite one is meant."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import am.train.__main__ as train_cli
from am.model.build import TEST_DECODER_CHANNELS, TEST_ENCODER, write_untrained_checkpoint

TINY = ["--encoder", TEST_ENCODER, "--decoder-channels", ",".join(map(str, TEST_DECODER_CHANNELS))]


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command reads or renders training data."""
    monkeypatch.setattr(train_cli, "synthetic_images", lambda **kwargs: pytest.fail("images were rendered"))
    monkeypatch.setattr(train_cli, "read_pairs", lambda *args, **kwargs: pytest.fail("images were read"))


def _refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as stopped:
        train_cli.main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_an_init_checkpoint_of_another_architecture_is_refused_before_any_data_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture, no_data) -> None:
    other = write_untrained_checkpoint(tmp_path / "r18.pt", encoder="resnet18")
    out = tmp_path / "m.pt"
    err = _refused(["--out", str(out), "--synthetic", "30", *TINY, "--init", str(other)], capsys)
    assert f"--init {other} is a Unet/resnet18" in err and f"Unet/{TEST_ENCODER}" in err
    assert "--init-partial lets only the decoder widths differ" in err
    same = write_untrained_checkpoint(tmp_path / "tiny.pt", encoder=TEST_ENCODER,
                                      decoder_channels=TEST_DECODER_CHANNELS)
    err = _refused(["--out", str(out), "--synthetic", "30", "--encoder", TEST_ENCODER, "--decoder-channels",
                    "64,32,16,8,4", "--init", str(same)], capsys)
    assert "decoder [32, 16, 8, 8, 4]" in err
    err = _refused(["--out", str(out), "--synthetic", "30", *TINY, "--refine-channels", "8", "--init-partial",
                    "--decoder-channels", "64,32,16,8,4", "--init", str(same)], capsys)
    assert "a refined model starts only from the same decoder" in err
    err = _refused(["--out", str(out), "--synthetic", "30", *TINY, "--init", str(tmp_path / "none.pt")], capsys)
    assert "none.pt does not exist" in err
    assert not out.exists()


def test_a_matching_init_checkpoint_passes_the_early_check(tmp_path: Path) -> None:
    same = write_untrained_checkpoint(tmp_path / "tiny.pt", encoder=TEST_ENCODER,
                                      decoder_channels=TEST_DECODER_CHANNELS)
    args = train_cli.parser().parse_args(["--out", str(tmp_path / "m.pt"), "--synthetic", "2", *TINY,
                                          "--init", str(same)])
    assert train_cli._init_problem(args) is None
    wider = train_cli.parser().parse_args(["--out", str(tmp_path / "m.pt"), "--synthetic", "2", "--encoder",
                                           TEST_ENCODER, "--decoder-channels", "64,32,16,8,4", "--init", str(same),
                                           "--init-partial"])
    assert train_cli._init_problem(wider) is None


@pytest.mark.parametrize(("args", "words"), [
    (["--synthetic-blobs", "inf"], "--synthetic-blobs inf must be a finite number >= 0"),
    (["--synthetic-blobs", "nan"], "--synthetic-blobs nan must be a finite number >= 0"),
    (["--synthetic-blobs", "-1"], "--synthetic-blobs -1.0 must be a finite number >= 0"),
    (["--refine-channels", "8", "--refine-lr", "inf"], "--refine-lr inf needs --refine-channels and must be a finite"),
    (["--refine-channels", "8", "--refine-lr", "nan"], "--refine-lr nan"),
    (["--scale-min", "nan"], "--scale-min nan"),
    (["--scale-min", "inf", "--scale-max", "inf"], "--scale-min inf"),
    (["--pixel-scale", "inf"], "--pixel-scale inf"),
    (["--weight-decay", "nan"], "--weight-decay nan"),
    (["--max-minutes", "inf"], "--max-minutes inf"),
    (["--threshold", "nan"], "--threshold nan"),
    (["--min-mark-fraction", "inf"], "--min-mark-fraction inf"),
    (["--low-resolution", "inf"], "--low-resolution inf"),
    (["--pitch-min", "inf", "--pitch-max", "inf"], "--pitch-min inf"),
    (["--synthetic-polarities", "bright=inf"], "--synthetic-polarities"),
    (["--synthetic-polarities", "bright=nan,rim=1"], "--synthetic-polarities"),
])
def test_numbers_that_are_not_finite_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture, no_data,
                                                 args: list[str], words: str) -> None:
    err = _refused(["--out", str(tmp_path / "m.pt"), "--synthetic", "2", *args], capsys)
    assert words in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def _labelled(root: Path, split: str, name: str, image_size: int, mask_size: int) -> None:
    import cv2
    import numpy as np

    for kind, size in (("source", image_size), ("mask", mask_size)):
        folder = root / split / "d" / "g" / kind
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), np.zeros((size, size), np.uint8))


def test_data_problems_are_found_from_the_files_before_any_image_is_read_or_rendered(
        tmp_path: Path, capsys: pytest.CaptureFixture, no_data) -> None:
    out = ["--out", str(tmp_path / "m.pt"), *TINY]
    root = tmp_path / "labels"

    def failed(argv: list[str]) -> str:
        capsys.readouterr()
        assert train_cli.main(argv) == 1
        (line,) = [line for line in capsys.readouterr().err.splitlines() if "ERROR" in line]
        return line.split("ERROR am.train: ", 1)[1]

    _labelled(root, "train", "a.png", 128, 128)
    assert failed([*out, "--data", str(root), "--synthetic", "30"]) == (
        "training needs validation images: a valid/ split in a --data root, or --synthetic-valid N")
    assert failed([*out, "--data", str(root), "--data", f"{tmp_path}/./labels/", "--synthetic-valid", "2"]) == (
        f"--data {root} given more than once: each image would count twice")
    _labelled(root, "valid", "b.png", 128, 100)
    _labelled(root, "valid", "c.png", 96, 64)
    valid = root / "valid" / "d" / "g"
    assert failed([*out, "--data", str(root)]).startswith(
        f"{valid / 'source' / 'b.png'} is 128 x 128 px but its mask {valid / 'mask' / 'b.png'} is 100 x 100 px; "
        f"{valid / 'source' / 'c.png'} is 96 x 96 px")
    assert "--synthetic -5 must be >= 0" in _refused([*out, "--data", str(root), "--synthetic", "-5"], capsys)


def test_a_validation_image_too_small_to_score_is_refused_before_any_image_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture, no_data) -> None:
    # The pipeline refuses an image under 32 px on a side, so validation has no mask of its to score;
    # training crops may be that small (they are reflect-padded), so only valid/ is checked.
    root = tmp_path / "labels"
    _labelled(root, "train", "small.png", 24, 24)
    _labelled(root, "valid", "tiny.png", 20, 20)
    assert train_cli.main(["--out", str(tmp_path / "m.pt"), *TINY, "--data", str(root)]) == 1
    err = capsys.readouterr().err
    assert (f"{root / 'valid' / 'd' / 'g' / 'source' / 'tiny.png'} is 20 x 20 px (height x width); the model needs "
            "at least 32 px on each side") in err
    assert "small.png" not in err


def test_a_training_image_too_small_to_hold_a_mark_is_refused_before_any_image_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture, no_data) -> None:
    # Reflect-padded into a crop, a 1 x 1 px image is a flat crop and a 7 px one a mirror pattern: both
    # were trained on without a word. An 8 px image (the generator's smallest visible pitch) is kept.
    import cv2
    import numpy as np

    root = tmp_path / "labels"
    _labelled(root, "train", "dot.png", 1, 1)
    _labelled(root, "train", "kept.png", 8, 8)
    _labelled(root, "valid", "v.png", 64, 64)
    train = root / "train" / "d" / "g"
    for kind in ("source", "mask"):
        cv2.imwrite(str(train / kind / "strip.png"), np.zeros((7, 300), np.uint8))
    assert train_cli.main(["--out", str(tmp_path / "m.pt"), *TINY, "--data", str(root)]) == 1
    err = capsys.readouterr().err
    assert (f"{train / 'source' / 'dot.png'} is 1 x 1 px (height x width); {train / 'source' / 'strip.png'} is "
            "7 x 300 px (height x width): a training image needs at least 8 px on each side to hold a mark; leave it "
            "out of the training data, or use a larger crop") in err
    assert "kept.png" not in err and not (tmp_path / "m.pt").exists()


def test_synthetic_options_without_synthetic_images_are_said_to_have_no_effect(
        tmp_path: Path, capsys: pytest.CaptureFixture, no_data) -> None:
    root = tmp_path / "labels"
    _labelled(root, "train", "a.png", 128, 128)
    argv = ["--out", str(tmp_path / "m.pt"), *TINY, "--data", str(root)]
    assert train_cli.main([*argv, "--pitch-min", "30", "--synthetic-seed", "7", "--synthetic-blobs", "1"]) == 1
    err = capsys.readouterr().err
    assert ("--synthetic-seed, --pitch-min shape synthetic images, and this run renders none (no --synthetic or "
            "--synthetic-valid): they have no effect") in err
    assert train_cli.main(argv) == 1
    assert "no effect" not in capsys.readouterr().err


def test_a_resume_with_other_options_is_refused_before_any_data_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "labels"
    _labelled(root, "train", "a.png", 128, 128)
    _labelled(root, "valid", "b.png", 128, 128)
    argv = ["--out", str(tmp_path / "m.pt"), *TINY, "--data", str(root), "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "2", "--crop", "64", "--threads", "1", "--keep-state"]
    assert train_cli.main(argv) == 0
    monkeypatch.setattr(train_cli, "synthetic_images", lambda **kwargs: pytest.fail("images were rendered"))
    monkeypatch.setattr(train_cli, "read_pairs", lambda *args, **kwargs: pytest.fail("images were read"))
    capsys.readouterr()
    assert train_cli.main([*argv, "--lr", "0.5", "--resume"]) == 1
    assert "belongs to a run with other options (lr 0.002 -> 0.5)" in capsys.readouterr().err
    _labelled(root, "train", "c.png", 128, 128)  # one more training image is other data
    assert train_cli.main([*argv, "--resume"]) == 1
    assert "data.train_images 1 -> 2" in capsys.readouterr().err


def test_more_threads_than_cpus_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, no_data,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    err = _refused(["--out", str(tmp_path / "m.pt"), "--synthetic", "30", *TINY, "--threads", "100000"], capsys)
    assert "--threads 100000: this machine has 4 CPUs; give 0 (all) to 4" in err
    assert not (tmp_path / "m.pt").exists()
