"""am.train builds a run's TrainConfig once: with --resume, the configuration checked against the resume
state (its options, whether any epoch is left to train) is the very one that trains."""

from __future__ import annotations

from pathlib import Path

import pytest

import am.train.__main__ as train_cli
from am.train.loop import TrainConfig


class _Trained(Exception):
    """Raised by the stand-in training: the run got as far as training."""


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "fresh"])
def test_the_config_is_built_once_and_trained_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   resume: bool) -> None:
    argv = ["--synthetic", "1", "--synthetic-valid", "1", "--epochs", "1", "--out", str(tmp_path / "m.pt"),
            *(["--resume"] if resume else [])]
    args = train_cli.parser().parse_args(argv)
    built: list[TrainConfig] = []
    checked: list[TrainConfig] = []
    make_config = train_cli._config

    def config(*a: object, **k: object) -> TrainConfig:
        built.append(make_config(*a, **k))
        return built[-1]

    def resume_options_problem(config: TrainConfig) -> None:
        checked.append(config)

    def resume_without_training(config: TrainConfig) -> None:
        checked.append(config)  # epochs are left to train: None

    def train(config: TrainConfig, *a: object, **k: object) -> None:
        raise _Trained(config)

    monkeypatch.setattr(train_cli, "_config", config)
    monkeypatch.setattr(train_cli, "resume_options_problem", resume_options_problem)
    monkeypatch.setattr(train_cli, "resume_without_training", resume_without_training)
    monkeypatch.setattr(train_cli, "synthetic_images", lambda **k: [])  # nothing to render for this
    monkeypatch.setattr(train_cli, "train", train)
    with pytest.raises(_Trained) as trained:
        train_cli._check_data_then_train(args, argv)
    assert len(built) == 1
    assert trained.value.args[0] is built[0]
    assert checked == ([built[0], built[0]] if resume else [built[0]])
