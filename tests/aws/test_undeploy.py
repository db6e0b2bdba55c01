"""``make undeploy`` deletes the stack whatever state it is in.

A stack that failed to deploy or to delete (ROLLBACK_COMPLETE, DELETE_FAILED,
UPDATE_ROLLBACK_FAILED) has outputs that may name nothing, and ``am.scale drain`` refuses it:
the target must then skip the drain, empty only the buckets that still exist, and still delete
the stack. The recipe runs for real here, with ``make``, against a stand-in ``aws`` command that
plays the CLI's answers and a stand-in ``python`` for the drain; each records what it was asked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.aws.conftest import REPO
from tests.aws.fake_cli import FAKE_AWS_PREAMBLE

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

STACK = "am-segm-x"
BUCKETS = {"InputBucket": "am-segm-x-inputbucket-1", "OutputBucket": "am-segm-x-outputbucket-1"}
ASG = "am-segm-x-AutoScalingGroup-1"

FAKE_AWS = FAKE_AWS_PREAMBLE + f"""if command == ["cloudformation", "describe-stacks"]:
    status = os.environ["FAKE_STATUS"]
    if status == "MISSING":
        sys.stderr.write("An error occurred (ValidationError) when calling the DescribeStacks operation: "
                         "Stack with id {STACK} does not exist\\n")
        sys.exit(254)
    print(status)
elif command == ["cloudformation", "describe-stack-resource"]:
    logical = args[args.index("--logical-resource-id") + 1]
    if logical == "AutoScalingGroup":
        if not os.environ["FAKE_PROTECTED"]:
            sys.stderr.write("Resource AutoScalingGroup does not exist for stack {STACK}\\n")
            sys.exit(254)
        print({ASG!r})
    else:
        print({BUCKETS!r}[logical])
elif command == ["autoscaling", "describe-auto-scaling-groups"]:
    print(os.environ["FAKE_PROTECTED"].replace(",", "\\t"))
elif command == ["s3api", "head-bucket"]:
    sys.exit(0 if args[args.index("--bucket") + 1] in os.environ["FAKE_BUCKETS"].split(",") else 254)
elif command == ["cloudformation", "wait"]:
    sys.exit(int(os.environ.get("FAKE_WAIT_RC", "0")))
elif command == ["ecs", "list-task-definitions"]:
    print(os.environ.get("FAKE_REVISIONS", "").replace(",", "\t"))
elif command == ["ecs", "deregister-task-definition"]:
    sys.exit(int(os.environ.get("FAKE_DEREGISTER_RC", "0")))
"""

FAKE_PYTHON = f"""#!{sys.executable}
import os, sys
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write("python " + " ".join(sys.argv[1:]) + "\\n")
sys.exit(int(os.environ.get("FAKE_DRAIN_RC", "0")))
"""


def _script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def undeploy(tmp_path: Path, *, status: str, buckets: tuple[str, ...] = (), drain_rc: int = 0,
             wait_rc: int = 0, protected: str = "None", revisions: tuple[str, ...] = (),
             deregister_rc: int = 0) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``make undeploy`` with the stand-ins; returns the result and the commands they were asked to run.

    ``protected``: the group's instances protected from scale-in, comma-separated ("None" when it has
    none, as the CLI prints an empty list; "" when the stack has no auto scaling group). ``revisions``:
    the ARNs of the active task definitions whose family starts with the stack's worker family.
    """
    _script(tmp_path / "bin" / "aws", FAKE_AWS)
    venv = tmp_path / "venv"
    _script(venv / "bin" / "python", FAKE_PYTHON)
    # Newer than setup.py, so make does not try to install anything.
    (venv / ".installed").touch()
    log = tmp_path / "calls.log"
    log.touch()
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
           "FAKE_STATUS": status, "FAKE_BUCKETS": ",".join(buckets), "FAKE_DRAIN_RC": str(drain_rc),
           "FAKE_WAIT_RC": str(wait_rc), "FAKE_PROTECTED": protected,
           "FAKE_REVISIONS": ",".join(revisions), "FAKE_DEREGISTER_RC": str(deregister_rc)}
    result = subprocess.run(["make", "-s", "-C", str(REPO), "undeploy", f"VENV={venv}", f"STACK={STACK}",
                             "AWS_REGION=us-east-1"], env=env, capture_output=True, text=True, timeout=120)
    return result, log.read_text().splitlines()


def _asked(calls: list[str], words: str) -> bool:
    return any(words in call for call in calls)


def test_a_working_stack_is_drained_emptied_and_deleted(tmp_path) -> None:
    result, calls = undeploy(tmp_path, status="UPDATE_COMPLETE", buckets=tuple(BUCKETS.values()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _asked(calls, f"python -m am.scale --stack {STACK} --region us-east-1 drain --wait 600")
    for bucket in BUCKETS.values():
        assert _asked(calls, f"s3 rm s3://{bucket} --recursive")
    assert _asked(calls, f"cloudformation delete-stack --stack-name {STACK}")
    assert _asked(calls, f"cloudformation wait stack-delete-complete --stack-name {STACK}")
    assert f"stack {STACK} deleted" in result.stdout


@pytest.mark.parametrize("status, buckets", [
    ("ROLLBACK_COMPLETE", ()),                                  # the rollback removed the (empty) buckets
    ("DELETE_FAILED", (BUCKETS["OutputBucket"],)),              # a bucket with objects stopped the delete
    ("UPDATE_ROLLBACK_FAILED", tuple(BUCKETS.values())),
])
def test_a_failed_stack_is_deleted_without_draining(tmp_path, status, buckets) -> None:
    result, calls = undeploy(tmp_path, status=status, buckets=buckets)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not _asked(calls, "python"), "the drain needs a usable stack and refuses this one"
    assert f"stack {STACK} is {status}: not draining" in result.stderr
    for bucket in BUCKETS.values():
        assert _asked(calls, f"s3 rm s3://{bucket} --recursive") == (bucket in buckets)
    assert _asked(calls, f"cloudformation delete-stack --stack-name {STACK}")
    assert _asked(calls, f"cloudformation wait stack-delete-complete --stack-name {STACK}")


def test_no_stack_is_nothing_to_do(tmp_path) -> None:
    result, calls = undeploy(tmp_path, status="MISSING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "does not exist in us-east-1: nothing to delete" in result.stdout
    assert not _asked(calls, "delete-stack") and "deleted;" not in result.stdout


def test_workers_still_running_stop_the_undeploy_of_a_working_stack(tmp_path) -> None:
    result, calls = undeploy(tmp_path, status="CREATE_COMPLETE", drain_rc=1)
    assert result.returncode != 0
    assert not _asked(calls, "delete-stack")


def test_a_delete_that_fails_says_where_to_look(tmp_path) -> None:
    result, calls = undeploy(tmp_path, status="DELETE_FAILED", wait_rc=255)
    assert result.returncode != 0
    assert _asked(calls, "delete-stack")
    assert "describe-stack-events" in result.stderr and "--retain-resources" in result.stderr


def test_instances_left_protected_from_scale_in_are_released_before_the_delete(tmp_path) -> None:
    """ECS leaves its managed termination protection on the instances: the group could not be emptied."""
    instances = [f"i-{n:017x}" for n in range(60)]
    result, calls = undeploy(tmp_path, status="UPDATE_COMPLETE", protected=",".join(instances))
    assert result.returncode == 0, result.stdout + result.stderr
    releases = [i for i, call in enumerate(calls) if "autoscaling set-instance-protection" in call]
    assert len(releases) == 2, "at most 50 instances per call"
    released = [word for i in releases for word in calls[i].split() if word.startswith("i-")]
    assert released == instances
    assert all(f"--auto-scaling-group-name {ASG} --no-protected-from-scale-in" in calls[i] for i in releases)
    drain = next(i for i, call in enumerate(calls) if call.startswith("python"))
    delete = next(i for i, call in enumerate(calls) if "delete-stack" in call)
    assert drain < releases[0] and releases[-1] < delete, "released after the workers stop, before the delete"


@pytest.mark.parametrize("protected", ["None", ""])
def test_no_protected_instance_or_no_group_releases_nothing(tmp_path, protected) -> None:
    result, calls = undeploy(tmp_path, status="ROLLBACK_COMPLETE", protected=protected)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not _asked(calls, "set-instance-protection")
    assert _asked(calls, "delete-stack")


def test_a_warning_of_the_cli_is_shown_and_not_taken_for_the_status(tmp_path, monkeypatch) -> None:
    """Read with stderr, "UPDATE_COMPLETE" behind a warning was no usable state: the drain was skipped."""
    monkeypatch.setenv("FAKE_WARNING", "urllib3 warning: certificate verification is disabled")
    result, calls = undeploy(tmp_path, status="UPDATE_COMPLETE", buckets=tuple(BUCKETS.values()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _asked(calls, f"python -m am.scale --stack {STACK} --region us-east-1 drain --wait 600")
    assert "not draining" not in result.stderr
    assert "certificate verification is disabled" in result.stderr


TASK_DEFINITIONS = "arn:aws:ecs:us-east-1:123456789012:task-definition"


def test_the_worker_task_definitions_updates_kept_are_deregistered_once_the_stack_is_gone(tmp_path) -> None:
    ours = (f"{TASK_DEFINITIONS}/{STACK}-worker:3", f"{TASK_DEFINITIONS}/{STACK}-worker:4")
    another_stacks = f"{TASK_DEFINITIONS}/{STACK}-worker2-worker:1"  # listed too: the family is a prefix
    result, calls = undeploy(tmp_path, status="UPDATE_COMPLETE", buckets=tuple(BUCKETS.values()),
                             revisions=(*ours, another_stacks))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _asked(calls, f"ecs list-task-definitions --family-prefix {STACK}-worker --status ACTIVE")
    deregistered = [call.split()[-1] for call in calls if "ecs deregister-task-definition" in call]
    assert deregistered == list(ours)
    listed_at = next(i for i, call in enumerate(calls) if "ecs list-task-definitions" in call)
    assert listed_at > next(i for i, call in enumerate(calls) if "cloudformation wait stack-delete-complete" in call)


def test_a_revision_that_cannot_be_deregistered_fails_the_undeploy_naming_it(tmp_path) -> None:
    revision = f"{TASK_DEFINITIONS}/{STACK}-worker:3"
    result, _ = undeploy(tmp_path, status="UPDATE_COMPLETE", buckets=tuple(BUCKETS.values()),
                         revisions=(revision,), deregister_rc=254)
    assert result.returncode != 0
    assert f"stack {STACK} deleted, but task definition {revision} could not be deregistered" in result.stderr


def test_a_stack_that_was_not_deleted_keeps_its_task_definitions(tmp_path) -> None:
    result, calls = undeploy(tmp_path, status="UPDATE_COMPLETE", buckets=tuple(BUCKETS.values()), wait_rc=255,
                             revisions=(f"{TASK_DEFINITIONS}/{STACK}-worker:3",))
    assert result.returncode != 0
    assert not _asked(calls, "ecs list-task-definitions") and not _asked(calls, "ecs deregister-task-definition")
