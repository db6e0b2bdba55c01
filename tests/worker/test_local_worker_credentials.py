"""Which credentials local workers get: none for the embedded endpoint, the orchestrator's for a configured one."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import am.launchers.local
from am.backends import open_local_backend
from am.endpoint import EmbeddedEndpoint
from am.settings import Settings

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAFAKEKEYID0000003", "AWS_SECRET_ACCESS_KEY": "fake-secret",
               "AWS_SESSION_TOKEN": "fake-token"}
# Stands in for `python -m am.worker`: writes the environment it was started with, then exits.
DUMP_ENVIRONMENT = """\
#!{python}
import json, os
from pathlib import Path
Path(os.environ["DUMP_TO"]).write_text(json.dumps(dict(os.environ)))
"""


def _worker_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings) -> dict[str, str]:
    """The environment a worker of the local backend starts with, for ``settings``."""
    script = tmp_path / "fake-python"
    script.write_text(DUMP_ENVIRONMENT.format(python=sys.executable))
    script.chmod(0o755)
    dump = tmp_path / "environment.json"
    real = am.launchers.local.LocalLauncher

    class DumpingLauncher(real):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(python=str(script), **kwargs)

    monkeypatch.setattr(am.launchers.local, "LocalLauncher", DumpingLauncher)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    base = {**os.environ, "DUMP_TO": str(dump)}
    with open_local_backend(settings, model="m.pt", log_dir=tmp_path / "logs", base_environment=base) as backend:
        backend.launcher.start(1, backend.worker_environment)
        deadline = time.monotonic() + 60
        while not dump.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert dump.exists(), "the worker did not start"
    return json.loads(dump.read_text())


def test_workers_of_the_embedded_endpoint_get_no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _worker_environment(tmp_path, monkeypatch, Settings(workers=1))
    assert not set(CREDENTIALS) & set(env)
    assert env["AM_ENDPOINT_URL"].startswith("http://127.0.0.1:")


def test_workers_of_a_configured_endpoint_sign_as_the_orchestrator_does(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with EmbeddedEndpoint() as configured:
        url = configured.url
        env = _worker_environment(tmp_path, monkeypatch, Settings(workers=1, endpoint_url=url))
    assert {name: env.get(name) for name in CREDENTIALS} == CREDENTIALS
    assert env["AM_ENDPOINT_URL"] == url


def test_keep_job_data_on_the_embedded_endpoint_is_said_to_keep_nothing(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    # Its objects live in the endpoint's process, which stops with the run: the setting cannot keep them.
    with open_local_backend(Settings(workers=1, keep_job_data=True), model="m.pt", log_dir=tmp_path / "logs",
                            base_environment={}):
        pass
    assert any(r.levelname == "WARNING" and "keep_job_data has no effect on the embedded endpoint" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    with EmbeddedEndpoint() as lasting, open_local_backend(
            Settings(workers=1, keep_job_data=True, endpoint_url=lasting.url), model="m.pt",
            log_dir=tmp_path / "logs", base_environment={}):
        pass
    assert not any("keep_job_data" in r.getMessage() for r in caplog.records)


def test_worker_variables_given_to_the_orchestrator_are_replaced_with_a_warning_naming_what_to_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """AM_THREADS and AM_STOP_TIMEOUT_S are am.worker's; set for am.pipeline they were dropped without a word."""
    monkeypatch.setenv("AM_THREADS", "8")
    monkeypatch.setenv("AM_STOP_TIMEOUT_S", "600")
    with caplog.at_level("WARNING"):
        env = _worker_environment(tmp_path, monkeypatch, Settings(workers=1, worker_threads=1))
    assert env["AM_THREADS"] == "1" and env["AM_STOP_TIMEOUT_S"] == str(am.launchers.local.STOP_TIMEOUT_S)
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert ("AM_THREADS = '8' does not reach the local workers: they run with 1 torch thread(s) each, from the "
            "worker_threads setting; set worker_threads (AM_WORKER_THREADS") in said, said
    assert "AM_STOP_TIMEOUT_S = '600' does not reach the local workers: this launcher stops them 40 s" in said, said


def test_every_variable_the_local_backend_sets_is_left_out_of_the_check_of_inherited_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """check_local_worker_environment must not refuse a value that the backend replaces for the workers."""
    from am.backends import check_local_worker_environment

    env = _worker_environment(tmp_path, monkeypatch, Settings(workers=1))
    set_for_workers = {name for name in env if name.startswith("AM_") and env[name] != os.environ.get(name)}
    assert {"AM_QUEUE_URL", "AM_THREADS", "AM_STOP_TIMEOUT_S", "AM_WORKER_ID"} <= set_for_workers
    check_local_worker_environment({name: "not a valid value!" for name in set_for_workers})
