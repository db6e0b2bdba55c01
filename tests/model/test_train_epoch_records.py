"""What a run records of each epoch and says when it stops: the metrics log's learning rate is the one
the epoch trained at, a run stopped early and resumed with no more epochs than it did is finished in
its files too, and a time limit under a minute is named as such."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

import am.train.loop as loop
from am.train.data import Labelled, synthetic_images
from am.train.loop import TrainConfig, train
from am.train.runfiles import metrics_path, record_path, state_path

TINY = {"encoder": "tu-mobilenetv3_small_100", "encoder_depth": 5, "decoder_channels": (32, 16, 8, 8, 4)}
BASE = dict(**TINY, batch_size=2, crop=64, threads=1, tile_size=128)


@pytest.fixture(scope="module")
def images() -> list[Labelled]:
    return synthetic_images(count=3, size=128, seed=11)


def _rates(out: Path) -> list[float]:
    with metrics_path(out).open() as fh:
        return [float(row["lr"]) for row in csv.DictReader(fh)]


def test_the_logged_rate_is_the_mean_the_epoch_trained_at(tmp_path: Path, images: list[Labelled]) -> None:
    out = tmp_path / "m.pt"
    # Warm-up over 4 steps, 2 steps an epoch: epoch 1 takes 1/4 and 2/4 of --lr, epoch 2 3/4 and 4/4.
    train(TrainConfig(out=out, **BASE, epochs=2, steps_per_epoch=2, warmup_steps=4, lr=1e-3), images[:2], images[2:])
    assert _rates(out) == pytest.approx([1e-3 * (0.25 + 0.5) / 2, 1e-3 * (0.75 + 1.0) / 2])


def test_a_stopped_run_resumed_with_the_epochs_it_did_is_finished_in_its_files(
        tmp_path: Path, images: list[Labelled], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "m.pt"
    config = TrainConfig(out=out, **BASE, epochs=3, steps_per_epoch=1, warmup_steps=1, max_minutes=0.0001)
    monotonic = iter(range(0, 10**6, 60))  # a minute passes between any two readings of the clock
    monkeypatch.setattr(loop.time, "monotonic", lambda: float(next(monotonic)))
    with caplog.at_level(logging.WARNING, logger="am.train.loop"):
        stopped = train(config, images[:2], images[2:])
    assert len(stopped.history) == 1 and "the 0.006-second limit is reached" in caplog.text
    assert state_path(out).is_file() and not json.loads(record_path(out).read_text())["finished"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="am.train.loop"):
        result = train(TrainConfig(**{**config.__dict__, "epochs": 1, "resume": True}), images[:2], images[2:])
    assert result.epochs_run == 0 and "is finished at that length" in caplog.text
    record = json.loads(record_path(out).read_text())
    assert record["finished"] and record["epochs"] == 1 and len(record["history"]) == 1
    assert not state_path(out).exists()  # as after a last epoch: the run is over


@pytest.mark.parametrize(("minutes", "named"), [(0.0001, "0.006-second"), (0.5, "30-second"), (1, "1-minute"),
                                                (1.5, "1.5-minute"), (90, "90-minute")])
def test_time_limits_are_named_in_sensible_units(minutes: float, named: str) -> None:
    assert loop._time_limit(minutes) == named
