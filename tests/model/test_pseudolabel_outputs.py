"""am.pseudolabel checks everything before training and never mixes two runs' outputs.

Training is replaced by a stand-in that writes a tiny untrained checkpoint, so these run in
seconds; test_pseudolabel.py runs the real recipe end to end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import am.pseudolabel.__main__ as cli
import am.pseudolabel.core as core
from am.errors import CheckpointError, InputError
from am.imageio import read_image, write_png
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
    return {p.name: p.read_bytes() for p in out.iterdir()}


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
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


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
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_successful_rerun_replaces_every_output(tmp_path: Path, checkpoints: dict[str, bytes],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    train, _ = _fake_train(checkpoints)
    monkeypatch.setattr(core, "train", train)
    out = tmp_path / "out"
    before = _previous_run(out, checkpoints)
    image, labels = _image_and_labels()
    result = pseudo_label(image, labels, out_dir=out, config=FAST)
    now = {p.name: p.read_bytes() for p in out.iterdir()}
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
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


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
