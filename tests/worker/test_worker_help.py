"""``python -m am.worker --help`` explains the worker without any AM_* variable set: usage and the
variables it reads, exit 0; an argument the worker does not take is bad usage, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]


def _worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "am.worker", *args], cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_needs_no_environment_and_lists_the_variables(flag):
    done = _worker(flag)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m am.worker")
    for name in ("AM_QUEUE_URL", "AM_INPUT_BUCKET", "AM_OUTPUT_BUCKET", "AM_MODEL", "AM_PRECISION", "Exit codes"):
        assert name in done.stdout
    assert "missing environment" not in done.stderr


def test_an_argument_is_bad_usage_and_missing_variables_point_to_help():
    done = _worker("--queue", "q")
    assert done.returncode == 2 and "unrecognized arguments: --queue q" in done.stderr
    done = _worker()
    assert done.returncode == 2 and "AM_QUEUE_URL" in done.stderr and "python -m am.worker --help" in done.stderr
