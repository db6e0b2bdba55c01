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
from tests.log_handlers import handlers_during


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(cli, "iter_synthetic_images", refuse)
    monkeypatch.setattr(cli, "image_mask_pairs", refuse)
    monkeypatch.setattr(cli, "split_files", refuse)


@pytest.mark.parametrize(("options", "message"), [
    (["--pitch-min", "0"], "--pitch-min 0.0 and --pitch-max 80.0 must be finite numbers of pixels > 0"),
    (["--pitch-min=-3"], "must be finite numbers of pixels > 0"),
    (["--pitch-min", "50", "--pitch-max", "20"], "with min <= max"),
    (["--pitch-min", "2", "--pitch-max", "3"], "--pitch-min 2 px draws marks too small to show"),
    (["--pitch-max", "nan"], "--pitch-max nan must be finite numbers of pixels > 0"),
    (["--min-object-px=-5"], "--min-object-px -5: give a size in px >= 0"),
    (["--scale", "0"], "--scale 0.0 must lie between 0.05 and 20"),
    # Beyond what whole-image prediction takes: refused here, not after the model loaded and images were read.
    (["--scale", "25"], "--scale 25.0 must lie between 0.05 and 20"),
    (["--scale", "nan"], "--scale nan must lie between 0.05 and 20"),
    (["--model", "s3://bucket/models/m.pt"], "model s3://bucket/models/m.pt is an S3 URI, which only python -m "
                                              "am.pipeline --backend aws and its workers download; download it first"),
    (["--model", "absent.pt"], "--model absent.pt does not exist: pass a checkpoint (.pt) file"),
    (["--threads=-1"], "--threads -1: give a number of CPU threads >= 1, or 0 for torch's default"),
    # A MemoryError traceback after the model loaded, before: refused as am.train refuses --synthetic-size.
    (["--size", "65536"], "--size 65536 is above 4096: each synthetic image is rendered and held in memory whole"),
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
    assert sorted(p.name for p in (tmp_path / "sbs").iterdir()) == [cli.PANELS_MARK, "a.png", "a.tif.png", "b.png"]


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


def _labelled_folders(root: Path, names: tuple[str, ...] = ("a",), size: int = 64) -> tuple[Path, Path]:
    """``root/img`` and ``root/msk`` holding one synthetic image and its mask per name."""
    for name, item in zip(names, synthetic_images(count=len(names), size=size, seed=3), strict=True):
        write_png(root / "img" / f"{name}.png", item.image)
        write_png(root / "msk" / f"{name}.png", item.mask * 255)
    return root / "img", root / "msk"


def test_outputs_that_would_overwrite_the_inputs_are_usage_errors(tmp_path: Path, tiny_model: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    _no_work(monkeypatch)
    images, masks = _labelled_folders(tmp_path / "in")
    data = tmp_path / "data"
    (data / "valid").mkdir(parents=True)
    before = {p: p.read_bytes() for p in (tmp_path / "in").rglob("*.png")}
    base = ["--model", str(tiny_model), "--images", str(images), "--masks", str(masks)]
    for options, message in (
            (["--side-by-side", str(masks)], f"--side-by-side {masks} overlaps --masks"),
            (["--side-by-side", str(images / "panels")], "overlaps --images"),
            (["--side-by-side", str(tmp_path / "in")], "overlaps --images"),  # holds both input folders
            (["--side-by-side", str(masks / ".." / "msk")], "overlaps --masks"),
            (["--side-by-side", str(data / "valid"), "--data", str(data)], "overlaps --data"),
            (["--json", str(masks / "a.png")], f"--json {masks / 'a.png'} lies inside --masks"),
            (["--json", str(images / "scores.json")], "lies inside --images"),
            (["--json", str(tiny_model)], "is the model file")):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*base, *options])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err, (options, err)
    assert {p: p.read_bytes() for p in (tmp_path / "in").rglob("*.png")} == before
    assert sorted(p.name for p in images.iterdir()) == ["a.png"]


def test_images_and_masks_in_one_folder_are_a_usage_error(tmp_path: Path, tiny_model: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    _no_work(monkeypatch)
    images, _ = _labelled_folders(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--model", str(tiny_model), "--images", str(images), "--masks", str(tmp_path / "." / "img")])
    assert exit_.value.code == 2
    assert "--images and --masks are the same folder; each image would be its own mask" in capsys.readouterr().err


def test_synthetic_images_are_rendered_one_at_a_time_after_the_model_is_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # Lazily rendered, the images are those of synthetic_images (the README's figures depend on it).
    lazy = list(cli.iter_synthetic_images(count=2, size=64, seed=5, pitch_range=(22.0, 80.0)))
    eager = synthetic_images(count=2, size=64, seed=5, pitch_range=(22.0, 80.0))
    assert [i.name for i in lazy] == [i.name for i in eager]
    for a, b in zip(lazy, eager, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    not_a_model = tmp_path / "picture.png"
    write_png(not_a_model, np.zeros((8, 8), np.uint8))
    _no_work(monkeypatch)
    assert cli.main(["--model", str(not_a_model), "--synthetic", "3", "--size", "64"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_synthetic_defaults_are_the_held_out_set() -> None:
    from am.evaluate.heldout import HELD_OUT_PITCH, HELD_OUT_SEED, HELD_OUT_SIZE

    args = cli.parser().parse_args(["--synthetic", "40"])
    assert (args.seed, args.size, (args.pitch_min, args.pitch_max)) == (HELD_OUT_SEED, HELD_OUT_SIZE, HELD_OUT_PITCH)
    shown = " ".join(cli.parser().format_help().split())
    for default in (f"default {HELD_OUT_SEED}", f"default {HELD_OUT_SIZE}", "default 22", "default 80"):
        assert default in shown, default


def _panel_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_the_panel_folder_ends_complete_or_unchanged(tmp_path: Path, tiny_model: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    import am.evaluate.run as run

    images, masks = _labelled_folders(tmp_path, names=("a", "b"))
    panels = tmp_path / "panels"
    command = ["--model", str(tiny_model), "--images", str(images), "--masks", str(masks),
               "--side-by-side", str(panels), "--threads", "1"]
    assert cli.main(command) == 0
    (panels / "stale.png").write_bytes(b"an earlier run's panel")
    before = _panel_files(panels)
    real_predict, calls = run.predict_image_mask, []

    def stop_at_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(run, "predict_image_mask", stop_at_second)
    assert cli.main(command) == 130
    assert "earlier outputs are as they were and nothing of this run was kept" in capsys.readouterr().err
    assert _panel_files(panels) == before and sorted(p.name for p in tmp_path.iterdir()) == ["img", "msk", "panels"]
    monkeypatch.setattr(run, "predict_image_mask", real_predict)
    assert cli.main(command) == 0  # a finished run replaces the folder whole: no stale panel stays
    assert sorted(_panel_files(panels)) == [cli.PANELS_MARK, "a.png", "b.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "msk", "panels"]
    # A folder of someone's files is not replaced.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command[:-4], "--side-by-side", str(tmp_path / "mine")])
    assert exit_.value.code == 2 and "already holds files that are not panels" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_data_panels_are_named_without_a_doubled_suffix(tmp_path: Path, tiny_model: Path) -> None:
    item = synthetic_images(count=1, size=64, seed=2)[0]
    group = tmp_path / "data" / "valid" / "ds" / "g"
    write_png(group / "source" / "0.png", item.image)
    write_png(group / "mask" / "0.png", item.mask * 255)
    assert cli.main(["--model", str(tiny_model), "--data", str(tmp_path / "data"), "--threads", "1",
                     "--side-by-side", str(tmp_path / "panels")]) == 0
    assert sorted(p.name for p in (tmp_path / "panels").iterdir()) == [cli.PANELS_MARK, "valid_ds_g_source_0.png"]


def test_a_folder_named_like_an_image_is_not_an_image(tmp_path: Path, tiny_model: Path) -> None:
    images, masks = _labelled_folders(tmp_path)
    (images / "b.png").mkdir()
    assert [image.name for image, _ in cli.image_mask_pairs(images, masks)] == ["a.png"]
    assert cli.main(["--model", str(tiny_model), "--images", str(images), "--masks", str(masks), "--threads", "1",
                     "--json", str(tmp_path / "scores.json")]) == 0
    assert list(json.loads((tmp_path / "scores.json").read_text())["images"]) == ["a"]


def test_warnings_during_the_evaluation_go_around_the_progress_bar(tmp_path: Path, tiny_model: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import am.evaluate.run as run

    images, masks = _labelled_folders(tmp_path)
    handlers = handlers_during(monkeypatch, run, "predict_image_mask")
    assert cli.main(["--model", str(tiny_model), "--images", str(images), "--masks", str(masks),
                     "--threads", "1"]) == 0
    assert "_TqdmLoggingHandler" in handlers  # log lines are written through tqdm, not onto the bar's line
