"""Settings the worker cannot run with are refused in its settings step, before any S3 or SQS call:
exit 2 at once, naming the variable and its value, not exit 1 after half a minute of retries.

The worker's endpoint here is a port nothing listens on: a check made only after the first network
call would take the retries' 30 s and more, beyond the subprocess's timeout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from am.errors import ConfigError
from am.worker.config import WorkerConfig, model_uri_problem, precision_problem
from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE = "http://127.0.0.1:1"
BASE_ENV = {"AM_QUEUE_URL": f"{UNREACHABLE}/123/tiles", "AM_INPUT_BUCKET": "in-b", "AM_OUTPUT_BUCKET": "out-b",
            "AM_ENDPOINT_URL": UNREACHABLE}
# Well under the ~30 s of retries an unreachable endpoint costs before the worker gives up on it.
TIMEOUT_S = 20


def _worker(**variables: str) -> tuple[subprocess.CompletedProcess[str], float]:
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so the worker's device is the CPU on every machine.
    env = clean_env(**BASE_ENV, CUDA_VISIBLE_DEVICES="", **variables)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "am.worker"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    return done, time.monotonic() - started


@pytest.mark.parametrize(("name", "value", "said"), [
    ("AM_MODEL", "s3://", "AM_MODEL = 's3://' is not a model's location: S3 URI 's3://' must name a bucket and an "
                          "object key"),
    ("AM_MODEL", "s3://models", "AM_MODEL = 's3://models' is not a model's location"),
    ("AM_MODEL", "s3://models/dir/", "AM_MODEL = 's3://models/dir/' is not a model's location"),
    ("AM_PRECISION", "fp16", "AM_PRECISION = 'fp16' cannot be used on this machine (precision fp16 needs a CUDA "
                             "device, not cpu"),
    ("AM_REGION", "bad!region", "AM_REGION = 'bad!region' is not an AWS region name"),
])
def test_a_bad_setting_exits_2_before_any_network_call(name, value, said):
    done, seconds = _worker(**{name: value})
    assert done.returncode == 2, done.stderr
    assert said in done.stderr, done.stderr
    assert "python -m am.worker --help lists every variable" in done.stderr
    assert "retrying" not in done.stderr and "cannot start" not in done.stderr, done.stderr
    assert seconds < TIMEOUT_S


def test_what_to_use_instead_is_said():
    assert "set AM_MODEL to the s3:// URI of an uploaded checkpoint" in model_uri_problem("s3://", name="AM_MODEL")
    assert model_uri_problem("s3://models/am-segm.pt", name="AM_MODEL") is None
    assert model_uri_problem("/models/am-segm.pt", name="AM_MODEL") is None
    assert model_uri_problem("", name="AM_MODEL") is None


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_precisions_a_cpu_runs_are_accepted_there(monkeypatch, precision):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision_problem(precision, name="AM_PRECISION") is None
    assert WorkerConfig.from_environ({**BASE_ENV, "AM_PRECISION": precision}).precision == precision


def test_fp16_is_refused_without_cuda_and_accepted_with_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^AM_PRECISION = 'fp16' cannot be used on this machine \(precision fp16 "
                                          r"needs a CUDA device, not cpu.*set AM_PRECISION to auto or fp32"):
        WorkerConfig.from_environ({**BASE_ENV, "AM_PRECISION": "FP16"})
    # On a GPU machine (an ECS task's) fp16 is what auto picks anyway.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert WorkerConfig.from_environ({**BASE_ENV, "AM_PRECISION": "fp16"}).precision == "fp16"
