"""The commands that train share one progress bar over an epoch's steps."""

from __future__ import annotations

import am.pseudolabel.__main__ as pseudolabel_cli
import am.train.__main__ as train_cli
from am.train.progress import step_bar


def test_training_commands_share_the_step_bar() -> None:
    assert train_cli.step_bar is step_bar and pseudolabel_cli.step_bar is step_bar
    assert not hasattr(train_cli, "_bar") and not hasattr(pseudolabel_cli, "_bar")
    bar = step_bar(iter(range(3)), 3, "epoch 1/1")
    assert list(bar) == [0, 1, 2] and bar.total == 3 and bar.unit == "step" and not bar.leave
