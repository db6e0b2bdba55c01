"""``make deploy`` tells the template whether the worker service exists.

An update that names a desired count sets the service back to it and stops the tasks auto scaling
started (``tests/aws/test_template.py``). The recipe runs for real here, with ``make``, against a
stand-in ``aws`` command that plays the CLI's answers and records what it was asked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.aws.conftest import REPO
from tests.aws.fake_cli import FAKE_AWS_PREAMBLE

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

STACK = "am-segm-x"

FAKE_AWS = FAKE_AWS_PREAMBLE + f"""if command == ["cloudformation", "describe-stack-resource"]:
    service = os.environ["FAKE_SERVICE"]
    if service == "NO_STACK":
        sys.stderr.write("An error occurred (ValidationError) when calling the DescribeStackResource operation: "
                         "Stack '{STACK}' does not exist\\n")
        sys.exit(254)
    if service == "NO_SERVICE":
        sys.stderr.write("An error occurred (ValidationError) when calling the DescribeStackResource operation: "
                         "Resource Service does not exist for stack {STACK}\\n")
        sys.exit(254)
    if service == "EXPIRED":
        sys.stderr.write("An error occurred (ExpiredToken) when calling the DescribeStackResource operation: "
                         "The security token included in the request is expired\\n")
        sys.exit(254)
    print(service)
"""


def deploy(tmp_path: Path, *, service: str, region: tuple[str, ...] = ("AWS_REGION=us-east-1",),
           region_env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``make deploy`` with the stand-in; returns the result and the commands it was asked to run.

    ``region`` are the make arguments that set the region, ``region_env`` the AWS region variables of
    its environment (the test's own are left out)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(FAKE_AWS)
    (bin_dir / "aws").chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    env = {**{k: v for k, v in os.environ.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")},
           **(region_env or {}), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
           "FAKE_SERVICE": service}
    result = subprocess.run(["make", "-s", "-C", str(REPO), "deploy", f"STACK={STACK}", *region,
                             "VPC_ID=vpc-1", "SUBNET_IDS=subnet-a,subnet-b"],
                            env=env, capture_output=True, text=True, timeout=120)
    return result, log.read_text().splitlines()


def _deploy_call(calls: list[str]) -> str:
    [call] = [c for c in calls if "cloudformation deploy" in c]
    return call


@pytest.mark.parametrize("service", ["NO_STACK", "NO_SERVICE", "CREATE_FAILED", "DELETE_COMPLETE"])
def test_a_stack_without_a_working_service_creates_it_with_no_task(tmp_path, service) -> None:
    result, calls = deploy(tmp_path, service=service)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ServiceExists=false" in _deploy_call(calls)


@pytest.mark.parametrize("service", ["CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_FAILED"])
def test_an_existing_service_keeps_its_count(tmp_path, service) -> None:
    result, calls = deploy(tmp_path, service=service)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ServiceExists=true" in _deploy_call(calls)
    assert "worker service exists: true" in result.stdout


def test_a_stack_that_cannot_be_read_is_not_deployed(tmp_path) -> None:
    """Guessing "no service" would reset a running service's count: stop and say why instead."""
    result, calls = deploy(tmp_path, service="EXPIRED")
    assert result.returncode != 0
    assert not any("cloudformation deploy" in c for c in calls)
    assert f"cannot read the worker service of stack {STACK}" in result.stderr and "ExpiredToken" in result.stderr


def test_a_warning_of_the_cli_is_shown_and_not_taken_for_the_service_state(tmp_path, monkeypatch) -> None:
    """Read with stderr, a warning before "CREATE_FAILED" made a failed service look working."""
    monkeypatch.setenv("FAKE_WARNING", "urllib3 warning: certificate verification is disabled")
    result, calls = deploy(tmp_path, service="CREATE_FAILED")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ServiceExists=false" in _deploy_call(calls)
    assert "certificate verification is disabled" in result.stderr


@pytest.mark.parametrize(("region", "region_env", "used"), [
    ((), {}, "us-east-1"),
    ((), {"AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-1"),
    ((), {"AWS_REGION": "ap-south-1", "AWS_DEFAULT_REGION": "eu-west-1"}, "ap-south-1"),
    (("AWS_REGION=sa-east-1",), {"AWS_DEFAULT_REGION": "eu-west-1"}, "sa-east-1"),
])
def test_the_stack_goes_to_the_region_the_pipeline_looks_for_it_in(tmp_path, region, region_env, used) -> None:
    """The pipeline finds the stack in AWS_REGION, else AWS_DEFAULT_REGION: with only the latter set,
    make deploy used to put the stack in us-east-1, where the pipeline then did not find it."""
    result, calls = deploy(tmp_path, service="CREATE_COMPLETE", region=region, region_env=region_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls and all(call.startswith(f"aws --region {used} ") for call in calls), calls
