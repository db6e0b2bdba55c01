"""AM_OUTAGE_PATIENCE_S: how long a worker retries S3 while it throttles or cannot be reached is an operator's
setting, read and checked with the others, listed by ``--help`` and handed to the worker."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from am.errors import ConfigError
from am.model.build import write_test_checkpoint
from am.worker.__main__ import build_worker
from am.worker.config import DEFAULT_OUTAGE_PATIENCE_S, WorkerConfig
from am.worker.worker import opencv_threads_of_a_worker
from tests.environment import clean_env

from .conftest import Env

REPO = Path(__file__).resolve().parents[2]
BASE = {"AM_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/tiles", "AM_INPUT_BUCKET": "in",
        "AM_OUTPUT_BUCKET": "out"}


def test_the_patience_defaults_to_five_minutes_and_is_read_from_the_environment() -> None:
    assert WorkerConfig.from_environ(BASE).outage_patience_s == DEFAULT_OUTAGE_PATIENCE_S == 300.0
    assert WorkerConfig.from_environ({**BASE, "AM_OUTAGE_PATIENCE_S": " 45.5 "}).outage_patience_s == 45.5
    assert WorkerConfig.from_environ({**BASE, "AM_OUTAGE_PATIENCE_S": ""}).outage_patience_s == 300.0


@pytest.mark.parametrize(("value", "match"), [
    ("0", r"AM_OUTAGE_PATIENCE_S = 0.0 must be a finite number of seconds > 0"),
    ("-5", r"AM_OUTAGE_PATIENCE_S = -5.0 must be a finite number of seconds > 0"),
    ("inf", r"AM_OUTAGE_PATIENCE_S = inf must be a finite number of seconds > 0"),
    ("nan", r"AM_OUTAGE_PATIENCE_S = nan must be a finite number of seconds > 0"),
    ("5min", r"environment variable AM_OUTAGE_PATIENCE_S = '5min' is not a valid number"),
])
def test_a_bad_patience_is_refused_naming_the_variable_and_value(value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        WorkerConfig.from_environ({**BASE, "AM_OUTAGE_PATIENCE_S": value})


def test_a_bad_patience_makes_the_worker_exit_2_naming_it() -> None:
    done = subprocess.run([sys.executable, "-m", "am.worker"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=clean_env(**BASE, AM_OUTAGE_PATIENCE_S="-1"))
    assert done.returncode == 2, done.stderr
    assert "AM_OUTAGE_PATIENCE_S = -1.0 must be a finite number of seconds > 0" in done.stderr


def test_help_lists_the_patience() -> None:
    done = subprocess.run([sys.executable, "-m", "am.worker", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert "AM_OUTAGE_PATIENCE_S (default 300" in done.stdout


def test_the_worker_built_from_the_settings_gets_the_patience(env: Env, tmp_path: Path) -> None:
    model = write_test_checkpoint(tmp_path / "tiny.pt")
    config = WorkerConfig(queue_url=env.queue.url, input_bucket="in-bucket", output_bucket="out-bucket",
                          model=str(model), threads=1, compile="off", outage_patience_s=42.0)
    with opencv_threads_of_a_worker():
        worker = build_worker(config)
    assert math.isclose(worker._outage_s, 42.0)
