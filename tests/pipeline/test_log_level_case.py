"""Log levels are read in any case: ``--log-level debug``, ``AM_LOG_LEVEL=info`` and a config file's
``log_level: warning`` mean what they say (they were refused as unknown choices)."""

from __future__ import annotations

import argparse

import pytest

from am.cli import add_log_level_option
from am.settings import SettingError, Settings, load_settings


@pytest.mark.parametrize("given", ["debug", "Info", "WARNING"])
def test_the_option_takes_any_case(given):
    parser = argparse.ArgumentParser()
    add_log_level_option(parser)
    assert parser.parse_args(["--log-level", given]).log_level == given.upper()


def test_the_environment_and_the_settings_take_any_case():
    assert Settings(log_level="debug").log_level == "DEBUG"
    assert load_settings({}, environ={"AM_LOG_LEVEL": "warning"}).log_level == "WARNING"


def test_an_unknown_level_is_still_refused():
    with pytest.raises(SettingError, match=r"setting log_level = 'VERBOSE' is not allowed: it must be one of "
                                           r"DEBUG, INFO, WARNING, ERROR"):
        Settings(log_level="verbose")
