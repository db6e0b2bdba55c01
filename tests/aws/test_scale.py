"""``python -m am.scale`` against the stack deployed on moto."""

from __future__ import annotations

import importlib
import json

import pytest

from am.messages import TileMessage
from am.scale.__main__ import main
from tests.aws.conftest import STACK, add_gpu_hosts, client, register_small_task_definition

RESULTS_PREFIX = "https://sqs.us-east-1.amazonaws.com/123456789012/am-segm-results-"


@pytest.fixture
def deployed(aws, stack, monkeypatch) -> dict[str, str]:
    """The stack, a GPU host in its cluster, the service's scaling target, and a task definition that fits moto."""
    add_gpu_hosts(stack["Cluster"], 1)
    monkeypatch.setenv("AM_ECS_TASK_DEFINITION", register_small_task_definition(queue_url=stack["QueueUrl"]))
    # The stack's ServiceScalableTarget, which moto's CloudFormation skips.
    client("application-autoscaling").register_scalable_target(
        ServiceNamespace="ecs", ResourceId=f"service/{stack['Cluster']}/{stack['Service']}",
        ScalableDimension="ecs:service:DesiredCount", MinCapacity=0, MaxCapacity=4)
    return stack


def scale(*args: str) -> int:
    return main(["--stack", STACK, "--region", "us-east-1", *args])


def _service(stack: dict[str, str]) -> dict:
    return client("ecs").describe_services(cluster=stack["Cluster"], services=[stack["Service"]])["services"][0]


def _target(stack: dict[str, str]) -> dict:
    return client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="ecs", ResourceIds=[f"service/{stack['Cluster']}/{stack['Service']}"])["ScalableTargets"][0]


def _one_off_tasks(stack: dict[str, str]) -> list[dict]:
    ecs = client("ecs")
    arns = ecs.list_tasks(cluster=stack["Cluster"])["taskArns"]
    tasks = ecs.describe_tasks(cluster=stack["Cluster"], tasks=arns)["tasks"] if arns else []
    return [t for t in tasks if t.get("startedBy", "").startswith("am-segm")]


def _tile(job: str, tile: int) -> str:
    key = f"{job}/g/{tile:04d}.npy"
    return TileMessage(job=job, group="g", tiles=(tile,), input=key, output=key, model="s3://m/models/x.pt",
                       reply=f"{RESULTS_PREFIX}{job}").to_json()


def test_status_shows_queues_service_limits_and_tasks(deployed, capsys) -> None:
    sqs = client("sqs")
    for tile in range(3):
        sqs.send_message(QueueUrl=deployed["QueueUrl"], MessageBody=_tile("ja", tile))
    sqs.send_message(QueueUrl=deployed["DeadLetterQueueUrl"], MessageBody=_tile("ja", 9))
    assert scale("status") == 0
    out = capsys.readouterr().out
    assert "am-segm-tiles: 3 waiting, 0 in flight" in out
    assert "am-segm-tiles-dlq: 1" in out
    assert f"{deployed['Service']}: desired 0, running 0, pending 0" in out
    assert "min 0, max 4" in out
    assert "one-off tasks  running 0, pending 0" in out

    assert scale("status", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["waiting"], data["dead_letters"], data["desired"], data["max_tasks"]) == (3, 1, 0, 4)


def test_set_desired_count_and_limits(deployed, capsys) -> None:
    assert scale("set", "--desired", "2") == 0
    assert _service(deployed)["desiredCount"] == 2
    assert scale("set", "--min", "1", "--max", "6") == 0
    target = _target(deployed)
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 6)
    assert scale("set", "--max", "3") == 0
    assert (_target(deployed)["MinCapacity"], _target(deployed)["MaxCapacity"]) == (1, 3)
    out = capsys.readouterr().out
    assert "desired count: 0 -> 2" in out and "min 1, max 3" in out
    assert scale("set", "--min", "5") == 1
    assert "min 5, max 3" in capsys.readouterr().err
    # A refused bound leaves the desired count, and the GPU tasks it would start, alone.
    assert scale("set", "--desired", "3", "--min", "5") == 1
    assert _service(deployed)["desiredCount"] == 2 and "min 5, max 3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        scale("set", "--desired", "3", "--min", "5", "--max", "2")
    assert info.value.code == 2 and "--min 5 is above --max 2" in capsys.readouterr().err
    assert _service(deployed)["desiredCount"] == 2


def test_an_unknown_cluster_is_named_with_its_setting(deployed, capsys, monkeypatch) -> None:
    monkeypatch.setenv("AM_ECS_CLUSTER", "no-such-cluster")
    assert scale("status") == 1
    err = capsys.readouterr().err
    assert f"cannot describe ECS service {deployed['Service']} on cluster no-such-cluster" in err
    assert "ecs_cluster" in err and "Traceback" not in err


def test_set_without_a_value_is_a_usage_error(deployed) -> None:
    with pytest.raises(SystemExit) as info:
        scale("set")
    assert info.value.code == 2


@pytest.mark.parametrize(("args", "value"), [
    (["start", "1", "--idle-exit-s"], "nan"), (["start", "1", "--idle-exit-s"], "-5"),
    (["start", "1", "--idle-exit-s"], "0"), (["start", "1", "--idle-exit-s"], "1e400"),
    (["drain", "--wait"], "-1"), (["drain", "--wait"], "inf"), (["drain", "--wait"], "soon"),
])
def test_seconds_workers_would_refuse_are_usage_errors(capsys, args, value) -> None:
    # A worker exits at start on AM_IDLE_EXIT_S=nan: on AWS, GPU tasks started for nothing.
    with pytest.raises(SystemExit) as info:
        scale(*args, value)
    assert info.value.code == 2 and f"{value} is not a finite number of seconds" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "words"), [
    (["set", "--desired", "abc"], "argument --desired: 'abc' is not a whole number >= 0"),
    (["set", "--min", "-1"], "argument --min: -1 is below 0; give a whole number >= 0"),
    (["start", "two"], "argument N: 'two' is not a whole number >= 1"),
    (["start", "0"], "argument N: 0 is below 1; give a whole number >= 1"),
    (["redrive", "--max", "1.5"], "argument --max: '1.5' is not a whole number >= 1"),
])
def test_counts_that_are_no_whole_numbers_are_usage_errors_that_say_so(capsys, args, words) -> None:
    """Not argparse's "invalid _non_negative value", which names a function of ours instead of the rule."""
    with pytest.raises(SystemExit) as info:
        scale(*args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and words in err and "invalid" not in err, err


def test_start_runs_one_off_tasks(deployed, capsys) -> None:
    assert scale("start", "3", "--idle-exit-s", "120") == 0
    tasks = _one_off_tasks(deployed)
    assert len(tasks) == 3
    for task in tasks:
        assert task["startedBy"] == "am-segm-scale"
        [override] = task["overrides"]["containerOverrides"]
        assert override["environment"] == [{"name": "AM_IDLE_EXIT_S", "value": "120.0"}]
    out = capsys.readouterr().out
    assert "started 3 of 3 task(s)" in out
    assert all(t["taskArn"].rsplit("/", 1)[-1] in out for t in tasks)


def test_drain_suspends_scale_out_zeroes_the_service_and_stops_one_off_tasks(deployed, capsys) -> None:
    assert scale("set", "--desired", "2") == 0
    assert scale("start", "2") == 0
    capsys.readouterr()
    assert scale("drain") == 0
    assert _service(deployed)["desiredCount"] == 0
    assert _target(deployed)["SuspendedState"]["DynamicScalingOutSuspended"] is True
    tasks = _one_off_tasks(deployed)
    assert {t["desiredStatus"] for t in tasks} == {"STOPPED"}
    assert {t["stoppedReason"] for t in tasks} == {"am-segm drain: finish the current batch and exit"}
    out = capsys.readouterr().out
    assert "service desired count: 2 -> 0 (scale-out suspended" in out
    assert "asked 2 one-off task(s)" in out

    assert scale("resume") == 0
    assert _target(deployed)["SuspendedState"]["DynamicScalingOutSuspended"] is False


def test_a_drain_that_times_out_says_what_it_changed(deployed, capsys, monkeypatch) -> None:
    import am.scale.control

    assert scale("set", "--desired", "2") == 0
    assert scale("start", "1") == 0
    capsys.readouterr()
    # moto ends a stopped task at once; real tasks finish their batch first.
    monkeypatch.setattr(am.scale.control, "_workers_left", lambda *args: 3)
    assert scale("drain", "--wait", "0.1") == 1
    err = capsys.readouterr().err
    assert "still running after 0 s of draining; the service's desired count is now 0 (was 2)" in err
    assert "scale-out stays suspended (`am.scale resume` undoes it); 1 one-off task(s) were asked to finish" in err
    assert "scale-out suspended until `am.scale resume`" in err


def test_redrive_moves_live_jobs_tiles_and_leaves_the_rest(deployed, capsys, monkeypatch) -> None:
    # moto answers at once; no need to long-poll. (am.scale.redrive is also the function's name.)
    monkeypatch.setattr(importlib.import_module("am.scale.redrive"), "RECEIVE_WAIT_S", 0)
    sqs = client("sqs")
    sqs.create_queue(QueueName="am-segm-results-ja")  # job ja still runs; jb has ended
    for body in (_tile("ja", 1), _tile("ja", 2), _tile("jb", 1), "not json"):
        sqs.send_message(QueueUrl=deployed["DeadLetterQueueUrl"], MessageBody=body)

    def depth(url: str) -> int:
        return int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"]["ApproximateNumberOfMessages"])

    assert scale("redrive", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "would move 2 message(s)" in out and "ja/g/0001" in out and "jb/g/0001" in out
    assert "left 1 message(s) of ended jobs (use --drop-orphans" in out
    assert scale("redrive", "--dry-run", "--drop-orphans") == 0
    assert "would delete 1 message(s) of ended jobs:\n  jb/g/0001" in capsys.readouterr().out
    assert depth(deployed["DeadLetterQueueUrl"]) == 4 and depth(deployed["QueueUrl"]) == 0

    assert scale("redrive", "--job", "ja", "--max", "1") == 0
    assert depth(deployed["QueueUrl"]) == 1 and depth(deployed["DeadLetterQueueUrl"]) == 3
    assert scale("redrive") == 0
    out = capsys.readouterr().out
    assert "moved 1 message(s)" in out and "left 1 message(s) of ended jobs" in out and "1 unreadable" in out
    moved = sqs.receive_message(QueueUrl=deployed["QueueUrl"], MaxNumberOfMessages=10)["Messages"]
    assert sorted(TileMessage.from_json(m["Body"]).name for m in moved) == ["g/0001", "g/0002"]
    assert depth(deployed["DeadLetterQueueUrl"]) == 2

    assert scale("redrive", "--drop-orphans") == 0
    assert "deleted 1 message(s) of ended jobs" in capsys.readouterr().out
    assert depth(deployed["DeadLetterQueueUrl"]) == 1  # the unreadable one stays for a person to read


def test_an_unknown_stack_fails_with_a_message_not_a_traceback(aws, capsys) -> None:
    assert main(["--stack", "no-such-stack", "status"]) == 1
    err = capsys.readouterr().err
    assert "no-such-stack" in err and "make deploy" in err and "Traceback" not in err


def test_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("status", "set", "start", "drain", "resume", "redrive"):
        assert command in out
