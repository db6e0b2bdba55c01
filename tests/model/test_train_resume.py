"""Resuming, stopping and the records beside a checkpoint: a resume never silently starts afresh, an
interrupted run says how to go on, and the log, summary and state always describe the same run."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest
import torch

import am.train.__main__ as train_cli
import am.train.loop as loop
from am.errors import CheckpointError
from am.model.checkpoint import load_checkpoint
from am.model.predict import Predictor
from am.settings import OptionError
from am.train.data import Labelled, synthetic_images
from am.train.loop import TrainConfig, train
from am.train.runfiles import metrics_path, record_path, state_path
from tests.model.training_state import state_saver

TINY = {"encoder": "tu-mobilenetv3_small_100", "encoder_depth": 5, "decoder_channels": (32, 16, 8, 8, 4)}
BASE = dict(**TINY, steps_per_epoch=1, batch_size=2, crop=64, warmup_steps=1, threads=1)


@pytest.fixture(scope="module")
def images() -> list[Labelled]:
    return synthetic_images(count=4, size=128, seed=11)


def _run(config: TrainConfig, images: list[Labelled], **kwargs):
    return train(config, images[:3], images[3:], **kwargs)


def _interrupt_at(epoch: int):
    """A progress wrapper that stops the run like Ctrl-C as epoch ``epoch`` (1-based) begins."""
    def progress(iterable, total, desc):
        if desc.startswith(f"epoch {epoch}/"):
            raise KeyboardInterrupt
        return iterable
    return progress


def _csv_epochs(out: Path) -> list[int]:
    with metrics_path(out).open() as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def test_resume_without_a_state_is_an_error_and_a_finished_run_is_reported(
        tmp_path: Path, images: list[Labelled], caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "m.pt"
    nothing = TrainConfig(out=out, **BASE, epochs=2, resume=True)
    with pytest.raises(CheckpointError, match=r"--resume: there is no resume state .*m\.resume.*drop --resume"):
        _run(nothing, images)
    assert not out.exists() and not metrics_path(out).exists()  # nothing was trained

    done = _run(TrainConfig(out=out, **BASE, epochs=2), images)  # finished: its state is deleted
    assert not state_path(out).exists() and json.loads(record_path(out).read_text())["finished"]
    written = out.read_bytes()
    with caplog.at_level(logging.INFO, logger="am.train.loop"):
        again = _run(TrainConfig(out=out, **BASE, epochs=2, resume=True), images)
    assert again.epochs_run == 0 and again.best_epoch == done.best_epoch and "finished run of 2 epochs" in caplog.text
    with pytest.raises(CheckpointError, match=r"finished run of 2 epochs.*--init .*m\.pt"):
        _run(TrainConfig(out=out, **BASE, epochs=4, resume=True), images)
    with pytest.raises(OptionError, match=r"--epochs 1 is fewer than the 2 epochs"):
        _run(TrainConfig(out=out, **BASE, epochs=1, resume=True), images)
    with pytest.raises(CheckpointError, match=r"other options \(lr"):
        _run(TrainConfig(out=out, **BASE, epochs=2, lr=0.5, resume=True), images)
    # The finished model, its log and its summary are as the run left them.
    assert out.read_bytes() == written and _csv_epochs(out) == [1, 2]
    assert len(json.loads(record_path(out).read_text())["history"]) == 2


def test_a_resume_reports_epochs_counted_from_one_and_does_nothing_when_all_are_done(
        tmp_path: Path, images: list[Labelled], caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "m.pt"
    config = TrainConfig(out=out, **BASE, epochs=2, keep_state=True)
    with pytest.raises(KeyboardInterrupt):
        _run(config, images, progress=_interrupt_at(2))
    with caplog.at_level(logging.INFO, logger="am.train.loop"):
        _run(TrainConfig(**{**config.__dict__, "resume": True}), images)
    assert "after epoch 1 of 2" in caplog.text
    state_before = state_path(out).read_bytes()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="am.train.loop"):
        result = _run(TrainConfig(**{**config.__dict__, "resume": True}), images)
    assert result.epochs_run == 0 and "all 2 epochs done: nothing to train" in caplog.text
    assert state_path(out).read_bytes() == state_before and _csv_epochs(out) == [1, 2]
    with pytest.raises(OptionError, match=r"--epochs 1 is fewer than the 2 epochs"):
        _run(TrainConfig(**{**config.__dict__, "epochs": 1, "resume": True}), images)


def test_a_resume_with_more_epochs_says_its_learning_rate_is_replanned(
        tmp_path: Path, images: list[Labelled], caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "m.pt"
    config = TrainConfig(out=out, **{**BASE, "warmup_steps": 0}, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        _run(config, images, progress=_interrupt_at(2))
    with caplog.at_level(logging.WARNING, logger="am.train.loop"):
        result = _run(TrainConfig(**{**config.__dict__, "epochs": 4, "resume": True}), images)
    assert result.epochs_run == 3 and _csv_epochs(out) == [1, 2, 3, 4]
    # Step 2 (the first run with the restored optimiser's rate) is the old plan's; step 3, the last of
    # 2 in the old plan, stood at the floor, and stands half way down the cosine of 4 steps.
    old, new = (config.lr * loop._schedule(0, total)(2) for total in (2, 4))
    assert new > old
    assert (f"started for 2 epochs and now runs for 4: its learning-rate schedule is stretched to the new "
            f"length, so the rate leaves the old plan at step 3 of 4 ({new:.3g} instead of {old:.3g})") in caplog.text
    caplog.clear()
    with pytest.raises(KeyboardInterrupt):
        _run(TrainConfig(**{**config.__dict__, "out": tmp_path / "n.pt"}), images, progress=_interrupt_at(2))
    with caplog.at_level(logging.WARNING, logger="am.train.loop"):
        _run(TrainConfig(**{**config.__dict__, "out": tmp_path / "n.pt", "resume": True}), images)
    assert "learning-rate schedule" not in caplog.text  # the same length: nothing to say


def _new_length_log(before: int, after: int, *, done: int, warmup: int, caplog: pytest.LogCaptureFixture,
                    steps_per_epoch: int = 2) -> list[logging.LogRecord]:
    """What a run of ``before`` epochs, resumed after ``done`` steps for ``after`` epochs, logs about its schedule."""
    config = TrainConfig(out=Path("unused.pt"), **{**BASE, "warmup_steps": warmup, "steps_per_epoch": steps_per_epoch},
                         epochs=after)
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
                                                  lambda step: 1.0)
    scheduler.last_epoch = done
    steps = loop._Steps(scheduler.optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), [], None)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="am.train.loop"):
        loop._report_new_length({"options": {"epochs": before}, "best_epoch": 3}, steps, config)
    return [r for r in caplog.records if "started for" in r.getMessage()]


def test_a_shorter_run_still_within_warm_up_keeps_its_rate_and_does_not_warn(
        caplog: pytest.LogCaptureFixture) -> None:
    # The reported case: 20 epochs of 2 steps, stopped after step 10, resumed for 7 (14 steps), warm-up
    # 100 steps: every step left is in warm-up, whose rates do not depend on the length.
    records = _new_length_log(20, 7, done=10, warmup=100, caplog=caplog)
    assert [r.levelno for r in records] == [logging.INFO]
    assert "is the same under either length" in records[0].getMessage()
    assert "instead of" not in caplog.text


def test_a_shorter_run_past_warm_up_warns_from_what_to_what_with_distinct_rates(
        caplog: pytest.LogCaptureFixture) -> None:
    records = _new_length_log(20, 7, done=10, warmup=4, caplog=caplog)
    assert [r.levelno for r in records] == [logging.WARNING]
    message = records[0].getMessage()
    lr = TrainConfig.lr
    old, new = loop._schedule(4, 40), loop._schedule(4, 14)
    # Step 12 (index 11) is the first set by the new plan; the last, step 14, is where they differ most.
    assert (f"schedule is compressed to the new length, so the rate leaves the old plan at step 12 of 14 "
            f"({lr * new(11):.3g} instead of {lr * old(11):.3g}), and differs most at step 14 "
            f"({lr * new(13):.3g} instead of {lr * old(13):.3g})") in message
    for rates in re.findall(r"\(([0-9.e-]+) instead of ([0-9.e-]+)\)", message):
        assert rates[0] != rates[1], message
    assert "keeps epochs 20 in its metadata" in message


def test_a_resume_whose_plans_part_only_after_warm_up_names_the_first_step_they_part(
        caplog: pytest.LogCaptureFixture) -> None:
    # Resumed at step 6 of a 12-step warm-up: steps 8 to 12 are warm-up either way and step 13 starts
    # either cosine at the full rate; step 14 is the first where the cosine of 16 steps and that of 40 part.
    message = _new_length_log(20, 8, done=6, warmup=12, caplog=caplog)[0].getMessage()
    assert "leaves the old plan at step 14 of 16 (" in message


def test_a_run_stopped_before_its_resume_state_is_saved_logs_each_epoch_once(
        tmp_path: Path, images: list[Labelled], monkeypatch: pytest.MonkeyPatch) -> None:
    # Stopped after epoch 2's log row and before its resume state: the resumed run trains epoch 2
    # again, and the log must hold it once, as the summary does.
    out = tmp_path / "m.pt"
    config = TrainConfig(out=out, **BASE, epochs=3)
    real_save_state = loop.save_state

    def stop_at_second(path, *args, **kwargs):
        if kwargs["epoch"] == 1:
            raise KeyboardInterrupt
        real_save_state(path, *args, **kwargs)

    monkeypatch.setattr(loop, "save_state", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        _run(config, images)
    assert _csv_epochs(out) == [1, 2]
    monkeypatch.setattr(loop, "save_state", real_save_state)
    _run(TrainConfig(**{**config.__dict__, "resume": True}), images)
    assert _csv_epochs(out) == [1, 2, 3]
    assert [h["epoch"] for h in json.loads(record_path(out).read_text())["history"]] == [1, 2, 3]


def test_the_summary_always_describes_the_run_beside_it(tmp_path: Path, images: list[Labelled]) -> None:
    out = tmp_path / "m.pt"
    _run(TrainConfig(out=out, **BASE, epochs=2, seed=0), images)
    first = json.loads(record_path(out).read_text())
    # A new run stopped before its first epoch ends leaves the earlier run's files as they were.
    with pytest.raises(KeyboardInterrupt):
        _run(TrainConfig(out=out, **BASE, epochs=2, seed=5), images, progress=_interrupt_at(1))
    assert json.loads(record_path(out).read_text()) == first and _csv_epochs(out) == [1, 2]
    # Stopped after its first epoch, everything beside the checkpoint is the new run's.
    with pytest.raises(KeyboardInterrupt):
        _run(TrainConfig(out=out, **BASE, epochs=2, seed=5), images, progress=_interrupt_at(2))
    record = json.loads(record_path(out).read_text())
    with metrics_path(out).open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1] and not record["finished"]
    assert [h["train_loss"] for h in record["history"]] == [float(r["train_loss"]) for r in rows]
    assert record["history"][0]["train_loss"] != first["history"][0]["train_loss"]
    meta, _ = load_checkpoint(out)
    assert meta.training["seed"] == 5 and meta.validation["epoch"] == 1
    assert meta.validation["arithmetic"] == record["validation_arithmetic"] == "fp32"
    assert torch.load(state_path(out), weights_only=True)["epoch"] == 0


def test_a_run_started_with_init_resumes_without_the_init_file(tmp_path: Path, images: list[Labelled]) -> None:
    base = tmp_path / "base.pt"
    _run(TrainConfig(out=base, **BASE, epochs=1), images)
    out = tmp_path / "next.pt"
    config = TrainConfig(out=out, **BASE, epochs=2, init=base)
    with pytest.raises(KeyboardInterrupt):
        _run(config, images, progress=_interrupt_at(2))
    base.unlink()  # an intermediate file, since removed: the state holds every weight
    for init in (None, base):
        resumed = _run(TrainConfig(**{**config.__dict__, "init": init, "resume": True, "keep_state": True}), images)
        assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert load_checkpoint(out)[0].training["init"] == "base.pt"
    with pytest.raises(CheckpointError, match=r"init 'base.pt' -> 'other.pt'"):
        _run(TrainConfig(**{**config.__dict__, "init": tmp_path / "other.pt", "epochs": 3, "resume": True}), images)


def test_names_beside_the_checkpoint_are_its_own() -> None:
    assert state_path(Path("runs/m.pt")) == Path("runs/m.resume")
    assert metrics_path(Path("runs/m.pt")) == Path("runs/m.metrics.csv")
    assert record_path(Path("runs/m.pt")) == Path("runs/m.metrics.json")
    names = [Path("runs/lr0.5"), Path("runs/lr0.7"), Path("runs/resnext50.v1"), Path("runs/resnext50.v2")]
    for derive in (state_path, metrics_path, record_path):
        assert len({derive(out) for out in names}) == len(names)
    out = Path("runs/m.resume")
    assert out not in {state_path(out), metrics_path(out), record_path(out)}


def test_unused_encoder_stages_are_reported_once_per_run(tmp_path: Path, images: list[Labelled],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    config = TrainConfig(out=tmp_path / "d4.pt", **{**BASE, "encoder_depth": 4, "decoder_channels": (32, 16, 8, 8)},
                         epochs=2)
    with caplog.at_level(logging.INFO, logger="am.train.loop"):
        _run(config, images)
    warnings = [r.getMessage() for r in caplog.records if "get no gradient" in r.getMessage()]
    assert len(warnings) == 1 and "beyond depth 4 are built and saved but never run or trained" in warnings[0]
    assert "all trainable" not in caplog.text


def test_a_failed_state_write_leaves_the_previous_state_and_no_stray_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.resume"
    save = state_saver(path, torch.nn.Linear(2, 1))
    save(0)
    before = path.read_bytes()

    def disk_full(payload, handle) -> None:
        handle.write(b"half a state")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loop.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save(1)
    assert [p.name for p in tmp_path.iterdir()] == ["m.resume"] and path.read_bytes() == before


def test_ctrl_c_names_the_command_that_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "my run.pt"
    argv = ["--synthetic", "4", "--epochs", "3", "--out", str(out)]
    args = train_cli.parser().parse_args(argv)

    def interrupted(*_: object) -> int:
        raise KeyboardInterrupt

    def interrupted_after_an_epoch(*_: object) -> int:
        state_path(out).write_bytes(b"state")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "_train", interrupted)
    assert train_cli._train_until_interrupted(args, argv) == 130
    assert "nothing of this run to resume; rerun the same command" in caplog.text
    monkeypatch.setattr(train_cli, "_train", interrupted_after_an_epoch)
    caplog.clear()
    assert train_cli._train_until_interrupted(args, argv) == 130
    command = f"python -m am.train --synthetic 4 --epochs 3 --out '{out}' --resume"
    assert caplog.text.rstrip().endswith(command) and str(state_path(out)) in caplog.text
    # The state an earlier run left (other options, perhaps) is not offered to this one.
    monkeypatch.setattr(train_cli, "_train", interrupted)
    caplog.clear()
    assert train_cli._train_until_interrupted(args, argv) == 130
    assert "nothing of this run to resume" in caplog.text and "holds an earlier run's epochs" in caplog.text
    # Said at the start too, while the user can still stop and resume the earlier run instead.
    assert caplog.records[0].levelname == "WARNING" and caplog.records[0].getMessage() == (
        f"{state_path(out)} holds the epochs of an earlier run; this run starts afresh and replaces it at its "
        "first epoch (to continue that run instead, stop now and add --resume)")
    assert "--resume" not in caplog.text.replace("add --resume", "")
    # A resumed run interrupted before its next epoch can still be resumed from that state.
    resumed = train_cli.parser().parse_args([*argv, "--resume"])
    caplog.clear()
    assert train_cli._train_until_interrupted(resumed, [*argv, "--resume"]) == 130
    assert caplog.text.rstrip().endswith(command)


def test_int8_runs_write_int8_checkpoints_and_older_states_resume(tmp_path: Path, images: list[Labelled]) -> None:
    out = tmp_path / "int8.pt"
    config = TrainConfig(out=out, **BASE, epochs=2, int8=True)
    with pytest.raises(KeyboardInterrupt):
        _run(config, images, progress=_interrupt_at(2))
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert raw["version"] == 2 and raw["scales"] and load_checkpoint(out)[0].training["int8"] is True
    # The figures the checkpoint records are those of its own int8 weights, not of the float32 model.
    from_file = Predictor.from_checkpoint(out, device="cpu", batch_size=4, precision="fp32")
    measured, _ = loop.validate(from_file, images[3:], tile_size=from_file.meta.tile_size)
    recorded = load_checkpoint(out)[0].validation
    assert {k: recorded[k] for k in measured} == pytest.approx(measured, abs=1e-6)
    with pytest.raises(CheckpointError, match=r"int8 True -> False"):
        _run(TrainConfig(**{**config.__dict__, "int8": False, "resume": True}), images)
    # A state written before the option existed records no "int8": it resumes as the fp16 run it was.
    state = torch.load(state_path(out), map_location="cpu", weights_only=True)
    del state["options"]["int8"]
    torch.save(state, state_path(out))
    resumed = _run(TrainConfig(**{**config.__dict__, "int8": False, "resume": True}), images)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert torch.load(out, map_location="cpu", weights_only=True)["version"] == 1
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--out", str(tmp_path / "x.pt"), "--synthetic", "2", "--fp32", "--int8"])
    assert exit_info.value.code == 2
