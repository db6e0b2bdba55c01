"""ecs/task-definition.json: renders to a valid RegisterTaskDefinition request that matches the stack's."""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

from botocore.validate import validate_parameters

from tests.aws.conftest import REGION, client, load_template

TEMPLATE = Path(__file__).resolve().parents[2] / "ecs" / "task-definition.json"
VALUES = {
    "IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/am-segm-worker:latest",
    "TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/am-segm-worker",
    "EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/am-segm-worker-execution",
    "QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/am-segm-tiles",
    "INPUT_BUCKET": "in", "OUTPUT_BUCKET": "out", "MODEL_URI": "s3://models/models/am-segm.pt",
    "REGION": REGION, "LOG_GROUP": "/am-segm/worker",
}


RENDER = TEMPLATE.parent / "render_task_definition.py"


def _render(out: Path, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """What ``make task-definition`` runs, with only ``environ`` (and PATH) set."""
    return subprocess.run([sys.executable, str(RENDER), str(TEMPLATE), str(out)], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], **environ}, timeout=60, check=False)


def _rendered() -> dict[str, Any]:
    text = TEMPLATE.read_text(encoding="utf-8")
    return json.loads(string.Template(text).substitute(VALUES))


def test_the_render_make_runs_fills_every_placeholder_or_names_the_missing_ones(tmp_path: Path) -> None:
    out = tmp_path / "build" / "task-definition.json"
    done = _render(out, VALUES)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text()) == _rendered()
    out.unlink()
    lacking = {k: v for k, v in VALUES.items() if k not in ("TASK_ROLE_ARN", "LOG_GROUP")}
    refused = _render(out, lacking)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"error: set TASK_ROLE_ARN, LOG_GROUP to render {TEMPLATE} (see ecs/README.md)" in refused.stderr
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_placeholders_are_exactly_the_documented_ones() -> None:
    found = set(re.findall(r"\$\{([A-Z_]+)\}", TEMPLATE.read_text(encoding="utf-8")))
    assert found == set(VALUES)
    readme = (TEMPLATE.parent / "README.md").read_text(encoding="utf-8")
    assert all(f"${{{name}}}" in readme for name in VALUES)


def test_renders_to_a_valid_register_task_definition_request(aws) -> None:
    request = _rendered()
    shape = client("ecs").meta.service_model.operation_model(
        "RegisterTaskDefinition").input_shape
    validate_parameters(request, shape)
    ecs = aws.ecs()
    arn = ecs.register_task_definition(**request)["taskDefinition"]["taskDefinitionArn"]
    [container] = ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]["containerDefinitions"]
    assert {"type": "GPU", "value": "1"} in container["resourceRequirements"]


def test_matches_the_stack_task_definition() -> None:
    request = _rendered()
    [container] = request["containerDefinitions"]
    stack = load_template()
    props = stack["Resources"]["TaskDefinition"]["Properties"]
    [stack_container] = props["ContainerDefinitions"]
    params = stack["Parameters"]
    # The stack names its family after itself; the default stack's is the file's.
    assert props["Family"] == {"Fn::Sub": "${AWS::StackName}-worker"} and request["family"] == "am-segm-worker"
    assert request["requiresCompatibilities"] == props["RequiresCompatibilities"]
    assert request["networkMode"] == props["NetworkMode"]
    assert container["name"] == stack_container["Name"]
    assert container["cpu"] == params["TaskCpu"]["Default"]
    assert container["memory"] == params["TaskMemory"]["Default"]
    assert container["stopTimeout"] == params["StopTimeoutSeconds"]["Default"]
    # The worker finishes its batch for all but the last seconds of the stop timeout it is told.
    told = {e["name"]: e["value"] for e in container["environment"]}
    assert told["AM_STOP_TIMEOUT_S"] == str(container["stopTimeout"])
    for variable, parameter in (("AM_MAX_BATCH_S", "MaxBatchSeconds"),
                                ("AM_OUTAGE_PATIENCE_S", "OutagePatienceSeconds")):
        assert told[variable] == str(params[parameter]["Default"]), variable
    assert container["linuxParameters"]["initProcessEnabled"] is True
    assert [e["name"] for e in container["environment"]] == [e["Name"] for e in stack_container["Environment"]]
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    # The tag is followed, not pinned to its first digest: `make push` reaches the next tasks.
    assert container["versionConsistency"] == stack_container["VersionConsistency"] == "disabled"


def test_environment_holds_settings_only() -> None:
    [container] = _rendered()["containerDefinitions"]
    assert all(e["name"].startswith("AM_") for e in container["environment"])
    assert "secrets" not in container
