"""Every AWS call the code makes is granted by the stack's policies: OperatorPolicy for the
orchestrator and ``am.scale``, TaskRole for the workers.

The calls are recorded at botocore's one entry point while a job runs end to end on moto
(``run_task`` workers in-process), while every ``am.scale`` command runs, and while a job's
launcher uses the service instead (``aws_launch: service``). moto enforces no IAM, so without
this a missing grant shows only on a real deployment, as AccessDenied in the middle of a job.
The comparison is by action; resource scoping is read in test_template.py.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import botocore.client
import pytest

import am.worker.__main__ as worker_main
from am.launchers.aws import EcsLauncher
from am.launchers.aws_stack import resolve_aws_resources
from am.orchestrator import run_pipeline
from am.scale.__main__ import main as scale
from am.settings import Settings
from am.transport.clients import ClientFactory
from tests.aws.conftest import REGION, STACK, client, load_template
from tests.aws.test_pipeline_aws import AGENT_CLIENT_TAG, agent, aws_settings  # noqa: F401  (fixtures)

WORKER_CLIENT_TAG = "am_test_worker"
# API operations whose IAM action has another name; the rest are "<service>:<Operation>".
# https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3.html
S3_ACTIONS = {"ListObjectsV2": "ListBucket", "ListObjects": "ListBucket", "HeadObject": "GetObject",
              "HeadBucket": "ListBucket", "DeleteObjects": "DeleteObject"}
# SQS batch calls are authorised as the single call (SendMessageBatch needs sqs:SendMessage).
SQS_BATCH_SUFFIX = "Batch"


def iam_action(service: str, operation: str) -> str:
    if service == "s3":
        operation = S3_ACTIONS.get(operation, operation)
    elif service == "sqs" and operation.endswith(SQS_BATCH_SUFFIX):
        operation = operation[: -len(SQS_BATCH_SUFFIX)]
    return f"{service}:{operation}".lower()


def granted(resource: str) -> set[str]:
    """The actions the template's ``resource`` (a managed policy or a role's inline policies) allows."""
    properties = load_template()["Resources"][resource]["Properties"]
    documents = [properties["PolicyDocument"]] if "PolicyDocument" in properties else \
        [policy["PolicyDocument"] for policy in properties["Policies"]]
    actions: set[str] = set()
    for document in documents:
        for statement in document["Statement"]:
            if statement["Effect"] == "Allow":
                value = statement["Action"]
                actions.update(a.lower() for a in (value if isinstance(value, list) else [value]))
    return actions


class Recorder:
    """Every API call, as (who, IAM action, where): "worker" for the workers' clients, "operator" for the rest."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.phase = ""

    def missing(self, who: str, allowed: set[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for caller, action, phase in self.calls:
            if caller == who and action not in allowed:
                out.setdefault(action, set()).add(phase)
        return out


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    record = Recorder()
    original = botocore.client.BaseClient._make_api_call

    def make_api_call(self: Any, operation: str, params: Any) -> Any:
        if not getattr(self, AGENT_CLIENT_TAG, False):  # what ECS itself does is no one's grant
            who = "worker" if getattr(self, WORKER_CLIENT_TAG, False) else "operator"
            record.calls.append((who, iam_action(self.meta.service_model.signing_name, operation), record.phase))
        return original(self, operation, params)

    class WorkerClients(ClientFactory):
        def _client(self, service: str) -> Any:
            made = super()._client(service)
            setattr(made, WORKER_CLIENT_TAG, True)
            return made

    monkeypatch.setattr(worker_main, "ClientFactory", WorkerClients)
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", make_api_call)
    yield record


def _scale(*args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return scale(["--stack", STACK, "--region", REGION, *args])


def test_every_call_of_a_job_and_of_am_scale_is_granted_by_the_stacks_policies(
        agent, aws_settings, stack, small_dataset, tmp_path, recorder) -> None:  # noqa: F811
    recorder.phase = "am.pipeline --backend aws (run_task)"
    run_pipeline(small_dataset, settings=aws_settings, groups=["g2"], register=False,
                 cache_dir=tmp_path / "cache", show_progress=False)
    agent.join()

    for command in (["status"], ["set", "--min", "0", "--max", "4"], ["set", "--desired", "0"], ["drain"],
                    ["resume"], ["redrive", "--dry-run"]):
        recorder.phase = f"am.scale {' '.join(command)}"
        assert _scale(*command) == 0, command

    recorder.phase = "aws_launch: service"
    settings = Settings(backend="aws", stack_name=STACK, aws_launch="service", region=REGION)
    clients = ClientFactory(region=REGION)
    resources = resolve_aws_resources(settings, cloudformation_client=clients.cloudformation(),
                                      sqs_client=clients.sqs())
    launcher = EcsLauncher(clients.ecs(), resources, mode="service", max_tasks=2)
    launcher.start(2, {"AM_QUEUE_URL": resources.queue_url})
    launcher.alive()
    launcher.stop()

    callers = {who for who, _, _ in recorder.calls}
    assert callers == {"operator", "worker"}, "the recording missed the workers' or the operator's calls"
    assert "ecs:describetaskdefinition" in {a for _, a, _ in recorder.calls}
    assert recorder.missing("operator", granted("OperatorPolicy")) == {}, "OperatorPolicy lacks these"
    assert recorder.missing("worker", granted("TaskRole")) == {}, "the TaskRole lacks these"
    assert client("ecs").describe_services(cluster=stack["Cluster"],
                                           services=[stack["Service"]])["services"][0]["desiredCount"] == 0
