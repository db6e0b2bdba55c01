"""``make upload-model`` checks the checkpoint before it copies anything to S3.

Every ECS worker reads the uploaded file at start, on GPU instances already paid for: one they
cannot load would fail them all. The recipe runs for real, with ``make`` and this interpreter as
the project's python, against a stand-in ``aws`` command that records what it was asked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.aws.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

MODEL_URI = "s3://am-segm-x-modelbucket-1/models/am-segm.pt"

FAKE_AWS = f"""#!{sys.executable}
import os, sys
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write("aws " + " ".join(sys.argv[1:]) + "\\n")
if "describe-stacks" in sys.argv:
    answer = os.environ.get("FAKE_STACK", "ok")
    if answer == "no credentials":
        sys.stderr.write("Unable to locate credentials. You can configure credentials by running aws configure.\\n")
        sys.exit(253)
    if answer == "a warning":
        sys.stderr.write("PythonDeprecationWarning: Boto3 will no longer support Python 3.8\\n")
    print("{MODEL_URI}" if answer in ("ok", "a warning") else "None")
"""


def upload(tmp_path: Path, model: Path, *, stack: str = "ok") -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``make upload-model MODEL=model`` with the stand-in; returns the result and the aws calls."""
    fake = tmp_path / "bin" / "aws"
    fake.parent.mkdir(parents=True)
    fake.write_text(FAKE_AWS)
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    # Newer than setup.py, so make does not try to install anything.
    (venv / ".installed").touch()
    log = tmp_path / "calls.log"
    log.touch()
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
           "FAKE_STACK": stack}
    result = subprocess.run(["make", "-s", "-C", str(REPO), "upload-model", f"MODEL={model}", f"VENV={venv}",
                             "STACK=am-segm-x"], env=env, capture_output=True, text=True, timeout=300)
    return result, log.read_text().splitlines()


def test_a_file_that_is_not_a_checkpoint_is_never_copied(tmp_path) -> None:
    junk = tmp_path / "notes.pt"
    junk.write_bytes(b"not a checkpoint")
    result, calls = upload(tmp_path, junk)
    assert result.returncode != 0
    assert f"error: {junk} " in result.stderr and "1 of 1 checkpoint(s) cannot be used" in result.stderr
    assert not any(" s3 " in call for call in calls), calls


def test_a_checkpoint_is_described_then_copied_to_the_stacks_model_uri(tmp_path, tiny_model) -> None:
    result, calls = upload(tmp_path, tiny_model)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{tiny_model}: Unet with " in result.stdout and "UNTRAINED" in result.stdout
    assert any(call.endswith(f"s3 cp {tiny_model} {MODEL_URI}") for call in calls), calls


@pytest.mark.parametrize(("stack", "said"), [
    ("no credentials", "Unable to locate credentials. You can configure credentials by running aws configure.\n"
                       "cannot read stack am-segm-x in region us-east-1 (the AWS CLI's error is above)"),
    ("a warning", None),
    ("no output", "stack am-segm-x in region us-east-1 has no ModelUri output: run make deploy first"),
])
def test_a_stack_that_cannot_be_read_is_told_apart_from_one_without_the_output(tmp_path, tiny_model, stack,
                                                                                said) -> None:
    # Credentials or the region, not a missing deployment, are the usual cause: the CLI's own words say so.
    result, calls = upload(tmp_path, tiny_model, stack=stack)
    if said is None:  # a warning of the CLI's on stderr is shown, and stays out of the URI
        assert result.returncode == 0, result.stderr
        assert any(call.endswith(f"s3 cp {tiny_model} {MODEL_URI}") for call in calls), calls
        return
    assert result.returncode != 0 and said in result.stderr
    assert not any(" s3 " in call for call in calls), calls
