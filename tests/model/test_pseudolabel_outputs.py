"""am.pseudolabel checks everything before training and never mixes two runs' outputs.

Training is replaced by a stand-in that writes a tiny untrained checkpoint, so these run in
seconds; test_pseudolabel.py runs the real recipe end to end.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import am.pseudolabel.__main__ as cli
import am.pseudolabel.core as core
from am.dataset_lock import LOCK_NAME, dataset_lock
from am.errors import CheckpointError, InputError
from am.imageio import read_image, write_png, write_tiff
from am.model.build import write_test_checkpoint
from am.pseudolabel.core import OUTPUTS, STAGING_NAME, CropLabel, PseudoConfig, pseudo_label
from am.train.loop import TrainResult

FAST = PseudoConfig(small_encoder="tu-mobilenetv3_small_100", big_encoder="tu-mobilenetv3_small_100",
                    small_epochs=1, big_epochs=1, steps_per_epoch=1, batch_size=1, crop=64, threads=1)


def _image_and_labels() -> tuple[np.ndarray, list[CropLabel]]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(96, 96), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    return image, [CropLabel(0, 0, mask), CropLabel(40, 40, mask)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Two different tiny checkpoints: an earlier run's and the stand-in training's (written once, they are slow)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return {which: write_test_checkpoint(folder / f"{which}.pt", seed=seed).read_bytes()
            for which, seed in (("earlier", 1), ("trained", 2))}


def _previous_run(out: Path, checkpoints: dict[str, bytes]) -> dict[str, bytes]:
    """An earlier run's complete outputs, each file recognisable by its bytes."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        if not name.endswith(".pt"):
            (out / name).write_bytes(f"earlier run's {name}".encode())
    (out / "small.pt").write_bytes(checkpoints["earlier"])
    (out / "model.pt").write_bytes(checkpoints["earlier"])
    (out / "notes.txt").write_text("a person's own file")
    return _files(out)


def _files(out: Path) -> dict[str, bytes]:
    """The folder's files by name (the run lock's file, which every run leaves, is no output)."""
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK_NAME}


def _fake_train(checkpoints: dict[str, bytes], fail: Callable[[Path], bool] = lambda out: False,
                write: Callable[[Path], bool] = lambda out: True):
    calls: list[str] = []

    def train(config, train_items, valid_items, *, progress=None) -> TrainResult:
        calls.append(config.out.name)
        if fail(config.out):
            raise RuntimeError(f"training {config.out.name} failed")
        if write(config.out):
            config.out.write_bytes(checkpoints["trained"])
        config.out.with_suffix(".metrics.json").write_text("{}")
        return TrainResult(best_epoch=1, best_metrics={"dice": 0.5, "f1": 0.5}, history=[], checkpoint=config.out)

    return train, calls


def test_a_bad_big_encoder_fails_before_any_training(tmp_path: Path, checkpoints: dict[str, bytes],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    train, calls = _fake_train(checkpoints)
    monkeypatch.setattr(core, "train", train)
    before = _previous_run(tmp_path / "out", checkpoints)
    image, labels = _image_and_labels()
    for config, which in ((PseudoConfig(big_encoder="bogus"), "big"), (PseudoConfig(small_encoder="bogus"), "small")):
        with pytest.raises(InputError, match=f"the {which} model: encoder 'bogus' is unknown"):
            pseudo_label(image, labels, out_dir=tmp_path / "out", config=config)
    assert calls == []
    assert _files(tmp_path / "out") == before


def test_a_held_out_crop_overlapping_a_trained_one_is_refused_before_any_training(
        tmp_path: Path, checkpoints: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    train, calls = _fake_train(checkpoints)
    monkeypatch.setattr(core, "train", train)
    image, labels = _image_and_labels()
    overlapping = [labels[0], CropLabel(16, 16, labels[1].mask)]  # the last (held out) shares 16 x 16 px
    with pytest.raises(InputError, match=r"held-out crop 16_16.png .* shares 25 % of its pixels with the crop 0_0"):
        pseudo_label(image, overlapping, out_dir=tmp_path / "out", config=FAST)
    assert calls == [] and not (tmp_path / "out").exists()
    touching = [labels[0], CropLabel(32, 0, labels[1].mask)]  # side by side, no pixel shared
    pseudo_label(image, touching, out_dir=tmp_path / "out", config=FAST)
    assert calls == ["small.pt", "model.pt"]


def test_a_failed_rerun_leaves_the_previous_outputs_as_they_were(tmp_path: Path, checkpoints: dict[str, bytes],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    train, calls = _fake_train(checkpoints, fail=lambda out: out.name == "model.pt")
    monkeypatch.setattr(core, "train", train)
    out = tmp_path / "out"
    before = _previous_run(out, checkpoints)
    image, labels = _image_and_labels()
    with pytest.raises(RuntimeError, match="model.pt failed"):
        pseudo_label(image, labels, out_dir=out, config=FAST)
    assert calls == ["small.pt", "model.pt"]  # it got as far as step 4, after writing the masks
    assert _files(out) == before


def test_a_successful_rerun_replaces_every_output(tmp_path: Path, checkpoints: dict[str, bytes],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    train, _ = _fake_train(checkpoints)
    monkeypatch.setattr(core, "train", train)
    out = tmp_path / "out"
    before = _previous_run(out, checkpoints)
    image, labels = _image_and_labels()
    result = pseudo_label(image, labels, out_dir=out, config=FAST)
    now = _files(out)
    assert now["notes.txt"] == before["notes.txt"]  # not ours: left alone
    # Everything of ours is this run's; what this run did not make (the metrics CSVs, resume
    # states) is gone rather than left beside files it does not describe.
    made = {"pseudo_mask.png", "known.png", "overlay.png", "summary.json", "small.pt", "model.pt",
            "small.metrics.json", "model.metrics.json"}
    assert set(now) == made | {"notes.txt"}
    assert all(now[name] != before[name] for name in made)
    np.testing.assert_array_equal(read_image(out / "pseudo_mask.png"), result.mask)
    assert result.model == out / "model.pt" and result.small_model == out / "small.pt"
    assert not (out / STAGING_NAME).exists()


def test_a_checkpoint_this_run_did_not_write_is_never_used(tmp_path: Path, checkpoints: dict[str, bytes],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Training that keeps no epoch writes no small.pt: the earlier run's small.pt must not be read instead.
    train, calls = _fake_train(checkpoints, write=lambda out: out.name != "small.pt")
    monkeypatch.setattr(core, "train", train)
    out = tmp_path / "out"
    before = _previous_run(out, checkpoints)
    image, labels = _image_and_labels()
    with pytest.raises(CheckpointError, match="small model saved no checkpoint"):
        pseudo_label(image, labels, out_dir=out, config=FAST)
    assert calls == ["small.pt"]
    assert _files(out) == before


@pytest.mark.parametrize("option", ["--small-epochs", "--big-epochs", "--steps-per-epoch", "--batch-size"])
def test_counts_below_one_are_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str,
                                           capsys: pytest.CaptureFixture) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(cli, "read_normalised", no_work)
    write_png(tmp_path / "labels" / "0_0.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(tmp_path / "image.png"), "--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "out"),
                  option, "0"])
    assert exit_.value.code == 2 and f"{option} must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="must be a whole number >= 1"):
        core.check_config(PseudoConfig(**{option[2:].replace("-", "_"): 0}))


def test_an_out_that_is_a_file_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(cli, "read_normalised", lambda *a, **k: pytest.fail("work started before --out was checked"))
    (tmp_path / "taken").write_text("a file")
    for out in (tmp_path / "taken", tmp_path / "taken" / "below"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([str(tmp_path / "image.png"), "--labels", str(tmp_path), "--out", str(out)])
        assert exit_.value.code == 2 and "is a file" in capsys.readouterr().err
    image, labels = _image_and_labels()
    with pytest.raises(InputError, match="is a file"):
        pseudo_label(image, labels, out_dir=tmp_path / "taken", config=FAST)
    assert (tmp_path / "taken").read_text() == "a file"


def test_overlapping_crops_that_contradict_each_other_are_refused_before_any_training(
        tmp_path: Path, checkpoints: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    train, calls = _fake_train(checkpoints)
    monkeypatch.setattr(core, "train", train)
    image, (first, held) = _image_and_labels()
    shifted = np.zeros_like(first.mask)
    shifted[:24, :24] = first.mask[8:, 8:]  # the same mark, labelled again from (8, 8)
    disagree = r"crops 0_0.png and 8_8.png overlap on 24 x 24 px and disagree on 25.0 % of them \(at most 2 %"
    with pytest.raises(InputError, match=disagree):
        pseudo_label(image, [first, CropLabel(8, 8, np.zeros_like(first.mask)), held], out_dir=tmp_path / "out",
                     config=FAST)
    assert calls == [] and not (tmp_path / "out").exists()
    pseudo_label(image, [first, CropLabel(8, 8, shifted), held], out_dir=tmp_path / "out", config=FAST)
    assert calls == ["small.pt", "model.pt"]


def test_two_labels_at_one_place_are_refused_by_name(tmp_path: Path) -> None:
    mask = np.zeros((32, 32), np.uint8)
    for name in ("0_0.png", "00_0.png", "40_40.png"):
        write_png(tmp_path / "labels" / name, mask)
    with pytest.raises(InputError, match=r"labels 00_0.png and 0_0.png in .* both start at column 0, row 0; keep one"):
        cli.read_labels(tmp_path / "labels")


@pytest.mark.parametrize("case", ["out is labels", "negative threads"])
def test_an_out_that_is_the_labels_folder_or_negative_threads_are_usage_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, case: str) -> None:
    monkeypatch.setattr(cli, "read_normalised", lambda *a, **k: pytest.fail("work started before the options"))
    write_png(tmp_path / "labels" / "0_0.png", np.zeros((32, 32), np.uint8))
    # The same folder spelt another way.
    out = f"{tmp_path}/labels/../labels" if case == "out is labels" else str(tmp_path / "out")
    extra = ["--threads", "-1"] if case == "negative threads" else []
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(tmp_path / "image.png"), "--labels", str(tmp_path / "labels"), "--out", out, *extra])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert ("is the labels folder; give another folder" if case == "out is labels" else "--threads -1") in err, err
    assert [p.name for p in (tmp_path / "labels").iterdir()] == ["0_0.png"] and not (tmp_path / "out").exists()


def test_the_labels_are_read_before_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "read_normalised", lambda *a, **k: pytest.fail("the image was read first"))
    assert cli.main([str(tmp_path / "image.png"), "--labels", str(tmp_path / "typo"), "--out",
                     str(tmp_path / "out")]) == 1


@pytest.mark.parametrize("failure", [RuntimeError("training failed"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a_first_run_that_fails_leaves_no_empty_out_folder(tmp_path: Path, checkpoints: dict[str, bytes],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           failure: BaseException) -> None:
    def train(*args, **kwargs):
        raise failure

    monkeypatch.setattr(core, "train", train)
    image, labels = _image_and_labels()
    with pytest.raises(type(failure)):
        pseudo_label(image, labels, out_dir=tmp_path / "new" / "out", config=FAST)
    assert not (tmp_path / "new" / "out").exists()
    # A folder that was there before is left, whatever it holds.
    (tmp_path / "kept").mkdir()
    with pytest.raises(type(failure)):
        pseudo_label(image, labels, out_dir=tmp_path / "kept", config=FAST)
    assert (tmp_path / "kept").is_dir()


def test_a_second_run_into_a_locked_out_folder_is_refused_and_touches_nothing(
        tmp_path: Path, checkpoints: dict[str, bytes], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    train, calls = _fake_train(checkpoints)
    monkeypatch.setattr(core, "train", train)
    out = tmp_path / "out"
    before = _previous_run(out, checkpoints)
    (out / STAGING_NAME).mkdir()  # the first run's work in progress
    (out / STAGING_NAME / "pseudo_mask.png").write_bytes(b"first run's mask")
    image, labels = _image_and_labels()
    monkeypatch.setattr(cli, "read_normalised", lambda path: image)
    write_png(tmp_path / "labels" / "0_0.png", labels[0].mask)
    write_png(tmp_path / "labels" / "40_40.png", labels[1].mask)
    with dataset_lock(out, command="am.pseudolabel"):
        assert cli.main([str(tmp_path / "image.png"), "--labels", str(tmp_path / "labels"), "--out", str(out),
                         "--crop", "64"]) == 1
    said = capsys.readouterr().err
    assert f"output folder {out} is in use by another run (am.pseudolabel, pid {os.getpid()} " in said
    assert calls == []
    assert _files(out) == before
    assert (out / STAGING_NAME / "pseudo_mask.png").read_bytes() == b"first run's mask"
    # Once the first run has ended, the next one runs, and leaves the lock's file as the only extra.
    pseudo_label(image, labels, out_dir=out, config=FAST)
    assert calls == ["small.pt", "model.pt"] and (out / LOCK_NAME).is_file() and not (out / STAGING_NAME).exists()


def test_a_crop_larger_than_the_image_is_refused_before_any_work(tmp_path: Path, checkpoints: dict[str, bytes],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    train, calls = _fake_train(checkpoints)
    monkeypatch.setattr(core, "train", train)
    image, labels = _image_and_labels()
    with pytest.raises(InputError, match=r"--crop 32768 is larger than the image \(96 x 96 px\); give at most 96"):
        pseudo_label(image, labels, out_dir=tmp_path / "out", config=PseudoConfig(crop=32768))
    with pytest.raises(InputError, match=r"image \(60 x 96 px\) is smaller than the smallest training crop, 64 px"):
        pseudo_label(image[:, :60], labels[:1], out_dir=tmp_path / "out", config=FAST)
    assert calls == [] and not (tmp_path / "out").exists()


def test_labels_without_any_mark_are_refused_and_a_blank_held_out_crop_is_warned_of(
        tmp_path: Path, checkpoints: dict[str, bytes], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    train, calls = _fake_train(checkpoints)
    monkeypatch.setattr(core, "train", train)
    image, (marked, held) = _image_and_labels()
    blank = np.zeros_like(marked.mask)
    no_mark = "no labelled crop in --labels contains a mark \\(every mask is 0\\): label at least one crop with marks"
    for labels in ([CropLabel(0, 0, blank)], [CropLabel(0, 0, blank), held]):  # the held-out crop is not learnt
        with pytest.raises(InputError, match=no_mark):
            pseudo_label(image, labels, out_dir=tmp_path / "out", config=FAST)
    assert calls == [] and not (tmp_path / "out").exists()
    pseudo_label(image, [marked, CropLabel(40, 40, blank, name="40_40.png")], out_dir=tmp_path / "out", config=FAST)
    assert calls == ["small.pt", "model.pt"]
    assert "held-out crop 40_40.png (the last by name) contains no mark" in caplog.text


def test_step_2_reports_its_progress(tmp_path: Path, checkpoints: dict[str, bytes],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    train, _ = _fake_train(checkpoints)
    monkeypatch.setattr(core, "train", train)
    seen: list[tuple[int, str]] = []

    def progress(iterable, total, desc):
        seen.append((total, desc))
        return iterable

    image, labels = _image_and_labels()
    pseudo_label(image, labels, out_dir=tmp_path / "out", config=FAST, progress=progress)
    assert seen == [(1, "predicting the image")]  # a 96 px image is one window (training is stood in for)


def test_the_small_model_is_not_warned_about_its_fixed_depth() -> None:
    small = core._small_config(FAST, Path("small.pt"), crops=1)
    big = core._big_config(FAST, Path("model.pt"), crops=1, known_fraction=0.5)
    assert small.encoder_depth == FAST.small_depth < 5 and not small.warn_unused
    assert big.warn_unused
    assert "warn_unused" not in small.meta(trained=False).training  # not a property of the model


def test_labels_of_every_mask_suffix_are_read_and_a_misnamed_image_is_refused(tmp_path: Path) -> None:
    mask = np.zeros((32, 32), np.uint8)
    mask[4:10, 4:10] = 255
    folder = tmp_path / "labels"
    write_png(folder / "0_0.PNG", mask)
    write_tiff(folder / "40_0.tif", mask)
    write_tiff(folder / "0_40.TIFF", mask)
    (folder / "notes.txt").write_text("which crops are labelled")
    labels = cli.read_labels(folder)
    assert [(label.x, label.y, label.name) for label in labels] == [(0, 0, "0_0.PNG"), (0, 40, "0_40.TIFF"),
                                                                    (40, 0, "40_0.tif")]
    assert all((label.mask == mask).all() for label in labels)
    (folder / "._0_0.PNG").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # a Mac's copy beside each file
    assert [label.name for label in cli.read_labels(folder)] == ["0_0.PNG", "0_40.TIFF", "40_0.tif"]
    write_tiff(folder / "crop 3.tif", mask)
    with pytest.raises(InputError, match=r"label .*crop 3.tif must be named X_Y.tif"):
        cli.read_labels(folder)
    (folder / "crop 3.tif").unlink()
    (folder / "80_0.JPG").write_bytes(b"\xff\xd8\xff\xe0")
    with pytest.raises(InputError, match=r"label .*80_0.JPG is JPEG, which masks are not read from .*convert it, "
                                         r"e.g. python -c .*80_0.png"):
        cli.read_labels(folder)


def test_a_labels_file_and_a_label_outside_the_image_are_named(tmp_path: Path) -> None:
    write_png(tmp_path / "labels" / "90_0.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(InputError, match=r"0.png is a file, not a folder: give the folder holding the X_Y.png masks"):
        cli.read_labels(tmp_path / "labels" / "90_0.png")
    image, _ = _image_and_labels()
    (label,) = cli.read_labels(tmp_path / "labels")
    with pytest.raises(InputError, match=r"label 90_0.png at x=90, y=0 of size 32x32 does not fit the 96x96 image"):
        core.crops_from_labels(image, [label])


def test_more_threads_than_cpus_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(cli, "read_normalised", lambda *a, **k: pytest.fail("work started before the options"))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    write_png(tmp_path / "labels" / "0_0.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(tmp_path / "image.png"), "--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "out"),
                  "--threads", "100000"])
    assert exit_.value.code == 2
    assert "--threads 100000: this machine has 4 CPUs; give 0 (all) to 4" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
