"""Durations must be finite: an infinite or NaN idle exit would pass a "> 0" check and break every worker."""

from __future__ import annotations

import pytest

from am.errors import ConfigError, WorkerError
from am.settings import load_settings

from .conftest import Env, FakePredictor


@pytest.mark.parametrize("key", ["idle_exit_s", "timeout_base_s", "timeout_per_tile_s"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_settings_refuse_durations_that_are_not_finite(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}.*finite.*environment variable AM_{key.upper()}"):
        load_settings(environ={f"AM_{key.upper()}": value})


def test_settings_still_take_a_long_idle_exit() -> None:
    assert load_settings(environ={"AM_IDLE_EXIT_S": "86400"}).idle_exit_s == 86400


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_worker_refuses_an_idle_exit_that_is_not_finite(env: Env, value: float) -> None:
    with pytest.raises(WorkerError, match="finite"):
        env.worker(FakePredictor(), idle_exit_s=value)
