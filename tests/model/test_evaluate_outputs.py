"""am.evaluate rejects bad options and output paths before any work, and loses no image to a shared name."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

import am.evaluate.__main__ as cli
from am.evaluate.__main__ import image_names
from am.evaluate.run import evaluate
from am.imageio import write_png
from am.model.predict import Predictor
from am.train.data import synthetic_images


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(cli, "synthetic_images", refuse)
    monkeypatch.setattr(cli, "image_mask_pairs", refuse)


@pytest.mark.parametrize(("options", "message"), [
    (["--pitch-min", "0"], "--pitch-min 0.0 and --pitch-max 85.0 must be finite numbers of pixels > 0"),
    (["--pitch-min=-3"], "must be finite numbers of pixels > 0"),
    (["--pitch-min", "50", "--pitch-max", "20"], "with min <= max"),
    (["--pitch-max", "nan"], "--pitch-max nan must be finite numbers of pixels > 0"),
    (["--min-object-px=-5"], "--min-object-px -5: give a size in px >= 0"),
    (["--scale", "0"], "--scale 0.0 must lie between 0.05 and 20"),
    # Beyond what whole-image prediction takes: refused here, not after the model loaded and images were read.
    (["--scale", "25"], "--scale 25.0 must lie between 0.05 and 20"),
    (["--scale", "nan"], "--scale nan must lie between 0.05 and 20"),
    (["--model", "s3://bucket/models/m.pt"], "model s3://bucket/models/m.pt is an S3 URI, which only python -m "
                                              "am.pipeline --backend aws and its workers download; download it first"),
    (["--model", "absent.pt"], "--model absent.pt does not exist: pass a checkpoint (.pt) file"),
])
def test_bad_numbers_are_usage_errors(tiny_model: Path, monkeypatch: pytest.MonkeyPatch, options: list[str],
                                      message: str, capsys: pytest.CaptureFixture) -> None:
    _no_work(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--model", str(tiny_model), "--synthetic", "1", "--size", "64", *options])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_output_paths_are_checked_before_the_evaluation(tmp_path: Path, tiny_model: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    _no_work(monkeypatch)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("taken")
    base = ["--model", str(tiny_model), "--synthetic", "1", "--size", "64"]
    for options, message in ((["--json", str(tmp_path / "folder")], "--json: "),
                             (["--json", str(tmp_path / "file" / "scores.json")], "is a file"),
                             (["--side-by-side", str(tmp_path / "file")], "--side-by-side: "),
                             (["--side-by-side", str(tmp_path / "file" / "png")], "is a file")):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*base, *options])
        assert exit_.value.code == 2 and message in capsys.readouterr().err, options
    assert (tmp_path / "file").read_text() == "taken" and not any((tmp_path / "folder").iterdir())


def test_outputs_in_a_read_only_folder_are_refused_before_the_evaluation(tmp_path: Path, tiny_model: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture) -> None:
    from faults.harness import read_only

    from am.train import __main__ as train_cli

    _no_work(monkeypatch)
    locked = tmp_path / "locked"
    (locked / "panels").mkdir(parents=True)
    base = ["--model", str(tiny_model), "--synthetic", "1", "--size", "64"]
    with read_only(locked) as reason, read_only(locked / "panels"):
        for options in (["--json", str(locked / "scores.json")], ["--side-by-side", str(locked / "panels")],
                        ["--side-by-side", str(locked / "new")]):
            with pytest.raises(SystemExit) as exit_:
                cli.main([*base, *options])
            err = capsys.readouterr().err
            assert exit_.value.code == 2 and f"cannot use {locked}" in err and reason in err, (options, err)
        # Training, too, is told before its hours of work that its checkpoint cannot be written.
        with pytest.raises(SystemExit) as exit_:
            train_cli.main(["--synthetic", "2", "--epochs", "1", "--out", str(locked / "m.pt")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"cannot use {locked}" in err, err


def test_image_names_are_stems_unless_stems_clash() -> None:
    paths = [Path(n) for n in ("a.png", "a.tif", "b.png", "a.png.tif", "c.tif")]
    assert image_names(paths) == ["a.png", "a.tif", "b", "a.png.tif", "c"]
    assert image_names([Path("x.png"), Path("y.tiff")]) == ["x", "y"]


def test_images_sharing_a_stem_keep_their_own_scores_and_panels(tmp_path: Path, tiny_model: Path) -> None:
    first, second = synthetic_images(count=2, size=64, seed=3)
    write_png(tmp_path / "img" / "a.png", first.image)
    write_png(tmp_path / "msk" / "a.png", first.mask * 255)
    tifffile.imwrite(tmp_path / "img" / "a.tif", second.image)
    tifffile.imwrite(tmp_path / "msk" / "a.tif", second.mask * 255)
    write_png(tmp_path / "img" / "b.png", first.image)
    write_png(tmp_path / "msk" / "b.png", first.mask * 255)
    assert cli.main(["--model", str(tiny_model), "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "msk"),
                     "--json", str(tmp_path / "out" / "scores.json"), "--side-by-side", str(tmp_path / "sbs"),
                     "--threads", "1"]) == 0
    report = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert list(report["images"]) == ["a.png", "a.tif", "b"]
    assert report["overall"]["true_objects"] == sum(v["true_objects"] for v in report["images"].values())
    assert sorted(p.name for p in (tmp_path / "sbs").iterdir()) == ["a.png.png", "a.tif.png", "b.png"]


def test_panels_of_images_with_the_same_name_do_not_overwrite_each_other(tmp_path: Path, tiny_model: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu")
    item = synthetic_images(count=1, size=64, seed=9)[0]
    renamed = [item, *(replace(item, name=n) for n in ("synthetic_9_00000", "synthetic/9/00000"))]
    results = evaluate(predictor, renamed, side_by_side=tmp_path)
    assert len(results) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic_9_00000-2.png", "synthetic_9_00000-3.png",
                                                          "synthetic_9_00000.png"]
    assert "is taken by an earlier image" in caplog.text
    assert np.array_equal(results[0].predicted, results[2].predicted)


def test_a_mask_of_another_size_fails_before_any_model_work(tmp_path: Path, tiny_model: Path,
                                                             monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # The third of three pairs is wrong: the whole run is refused up front, naming it, and nothing
    # (side-by-side panels, JSON) is written.
    group = tmp_path / "data" / "valid" / "ds" / "g"
    for index, mask_side in enumerate((64, 64, 48)):
        write_png(group / "source" / f"{index}.png", np.full((64, 64), 100, np.uint8))
        write_png(group / "mask" / f"{index}.png", np.zeros((mask_side, mask_side), np.uint8))

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the sizes were checked")

    monkeypatch.setattr(cli.Predictor, "from_checkpoint", refuse)
    code = cli.main(["--data", str(tmp_path / "data"), "--model", str(tiny_model), "--json",
                     str(tmp_path / "out.json"), "--side-by-side", str(tmp_path / "panels")])
    assert code == 1
    err = capsys.readouterr().err
    assert "2.png is 64 x 64 px but its mask" in err and "is 48 x 48 px" in err
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "panels").exists()


def test_masks_with_more_than_two_levels_are_cut_at_half_their_maximum(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from am.train.data import binary_mask

    marks = np.zeros((20, 20), np.uint8)
    marks[5:10, 5:10] = 255
    assert np.array_equal(binary_mask(marks, tmp_path / "m.png"), marks > 0)
    assert np.array_equal(binary_mask((marks > 0).astype(np.uint8), tmp_path / "m.png"), marks > 0)
    assert not caplog.records
    noisy = marks.copy()
    noisy[15:, :] = 2  # a background of 0-2, as a resampled or JPEG-saved mask has
    noisy[14, :] = 1
    assert np.array_equal(binary_mask(noisy, tmp_path / "noisy.png"), marks > 0)
    assert "noisy.png holds 4 grey levels" in caplog.text and "pixels above 127 count as marks" in caplog.text
