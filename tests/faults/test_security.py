"""Security: safe model loading, no archives unpacked unsafely, no credentials where they do not belong,
loopback-only local endpoint, HTTP bodies checked for type and size, forged queue messages never followed.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import torch

from am.errors import CheckpointError, ConfigError, LauncherError, TransportError
from am.imageio import encode_png
from am.launchers.aws import task_environment
from am.messages import tiles_key
from am.model.checkpoint import load_checkpoint
from am.model_source import check_checkpoint
from am.settings import read_config_file, setting_types
from am.transport.clients import ClientFactory
from am.transport.queue import Queue, create_results_queue, ensure_tile_queues
from am.transport.storage import Storage

from .harness import REPO, PipelineRun, assert_nothing_left, base_environment, make_dataset

PACKAGE = REPO / "am"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz-sentinel"
ACCESS_KEY = "AKIAIOSFODNN7SENTNEL"  # the shape of a real key: AKIA + 16


def _calls(attribute: str) -> list[tuple[Path, ast.Call]]:
    """Every call ``<something>.<attribute>(...)`` in the package's source."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute:
                found.append((path, node))
    return found


# ------------------------------------------------------------------------------- model files


class _Payload:
    """Pickles to "create a directory": what a hostile checkpoint would run on load without weights_only."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_hostile_checkpoint_is_refused_without_running_its_code(tmp_path):
    ran = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "am-segm-checkpoint", "version": 1, "meta": {}, "state_dict": {}, "x": _Payload(ran)},
               evil)
    with pytest.raises(CheckpointError, match="safe loading"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match=f"model {evil} cannot be used"):
        check_checkpoint(evil)  # what the orchestrator does before any worker starts
    assert not ran.exists(), "the checkpoint's pickled code ran"


def test_every_torch_load_in_the_package_uses_weights_only():
    loads = [(path, call) for path, call in _calls("load")
             if isinstance(call.func.value, ast.Name) and call.func.value.id == "torch"]
    assert loads, "no torch.load found: the check looks in the wrong place"
    for path, call in loads:
        flags = {k.arg: k.value for k in call.keywords}
        assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, \
            f"{path}:{call.lineno} calls torch.load without weights_only=True"


def test_archives_are_only_ever_extracted_with_a_safe_filter():
    """am-segm unpacks no archive today; any extractall added later must use the "data" filter."""
    for path, call in _calls("extractall") + _calls("unpack_archive"):
        flags = {k.arg: k.value for k in call.keywords}
        assert isinstance(flags.get("filter"), ast.Constant) and flags["filter"].value == "data", \
            f"{path}:{call.lineno} extracts an archive without filter='data' (path traversal, links, devices)"


# ------------------------------------------------------------------------------- credentials


def test_settings_and_config_hold_no_credentials(tmp_path):
    words = ("secret", "password", "access_key", "session_token", "credential")
    assert not [key for key in setting_types() if any(w in key for w in words)]
    template = (REPO / "config" / "config.yml.template").read_text()
    assert "AKIA" not in template and "aws_secret" not in template.lower()
    config = tmp_path / "config.yml"
    config.write_text(f"aws_secret_access_key: {SECRET}\n")
    with pytest.raises(ConfigError, match="unknown key") as caught:
        read_config_file(config)
    assert SECRET not in str(caught.value), "a refused config value was echoed into the error"


def test_ecs_task_overrides_never_carry_credentials():
    for env in ({"AM_QUEUE_URL": "u", "AWS_SECRET_ACCESS_KEY": SECRET}, {"AM_QUEUE_URL": "u", "AM_MODEL": ACCESS_KEY},
                {"AWS_SESSION_TOKEN": SECRET}):
        with pytest.raises(LauncherError, match="looks like a credential") as caught:
            task_environment(env)
        assert SECRET not in str(caught.value) and ACCESS_KEY not in str(caught.value)
    assert task_environment({"AM_QUEUE_URL": "u", "HOME": "/root"}) == [{"name": "AM_QUEUE_URL", "value": "u"}]


def test_local_run_keeps_credentials_from_workers_and_logs_and_listens_on_loopback_only(tmp_path, tiny_model):
    dataset = make_dataset(tmp_path / "ds", {"g1": (500, 500)})
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": SECRET,
           "AM_BATCH_SIZE": "1"}
    with PipelineRun(dataset, tiny_model, tmp_path, "--no-register", env=env) as run:
        run.wait_for_worker(1)
        orchestrator = psutil.Process(run.proc.pid)
        listening = [c.laddr for c in orchestrator.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        # A worker whose model is loaded and clients built (either one: the other may never get there).
        worker, log_path = run.wait_for_first_worker_logging("consuming", what="a worker consuming", timeout=60)
        worker_env = psutil.Process(worker).environ()
        worker_listening = [c for c in psutil.Process(worker).net_connections(kind="inet")
                            if c.status == psutil.CONN_LISTEN]
        log = log_path.read_text(errors="replace")
        assert run.wait(timeout=120) == 0, run.stderr[-4000:]

    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    assert worker_listening == []
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(worker_env)
    for text in (run.stderr, run.stdout, log):
        assert SECRET not in text and ACCESS_KEY not in text
    assert_nothing_left(run)


def test_embedded_endpoint_refuses_any_address_but_loopback():
    from am.endpoint import EmbeddedEndpoint

    for host in ("0.0.0.0", "::", "192.168.1.10"):
        with pytest.raises(TransportError, match="binds to 127.0.0.1 only"):
            EmbeddedEndpoint(host=host)


# ------------------------------------------------------------------------------------ HTTP


class _ThresholdPredictor:
    device = "cpu"
    batch_size = 4

    def predict(self, tiles: np.ndarray, *, tta: str = "off") -> np.ndarray:
        return np.where(tiles >= 128, np.uint8(255), np.uint8(0))


def test_http_endpoint_checks_content_type_and_size_before_reading_everything():
    from fastapi.testclient import TestClient

    from am.serve.app import create_app
    from am.serve.segment import ImageSegmenter

    limit = 64 * 1024
    app = create_app(ImageSegmenter(_ThresholdPredictor(), tile_size=128, tile_overlap=32), max_bytes=limit)
    png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8))[1].tobytes()
    with TestClient(app) as http:
        ok = http.post("/invocations", content=png, headers={"Content-Type": "image/png"})
        assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
        assert http.post("/invocations", content=png, headers={"Content-Type": "text/plain"}).status_code == 415
        assert http.post("/invocations", content=png, headers={"Content-Type": "application/x-python-pickle"}
                         ).status_code == 415
        big = png + bytes(limit)
        assert http.post("/invocations", content=big, headers={"Content-Type": "image/png"}).status_code == 413
        chunks = (big[i:i + 8192] for i in range(0, len(big), 8192))  # streamed, no Content-Length
        assert http.post("/invocations", content=chunks, headers={"Content-Type": "image/png"}).status_code == 413


# ------------------------------------------------------------------------- forged messages


def test_worker_rejects_messages_leaving_their_job_prefix_and_follows_none(moto_server, tmp_path, tiny_model):
    """A real worker process: messages with ``..`` or another job's keys are logged, dead-lettered, never followed."""
    job = "20261124-140000-5ec0de"
    clients = ClientFactory(endpoint_url=moto_server)
    sqs, storage = clients.sqs(), Storage(clients.s3())
    for bucket in ("sec-in", "sec-out"):
        storage.ensure_bucket(bucket)
    url, dlq_url = ensure_tile_queues(sqs, name="sec-tiles", dead_letter_name="sec-dlq", visibility_timeout_s=30,
                                      max_receive_count=3)
    results = Queue(sqs, create_results_queue(sqs, prefix="sec-results", job=job))
    secret_png = encode_png(np.full((128, 128), 200, np.uint8))
    storage.put_bytes("sec-in", "private/scan.png", secret_png)
    storage.put_bytes("sec-in", "other-job/g/0001.png", secret_png)
    good = tiles_key(job, "g", (0,))
    forged = [
        {"input": f"{job}/../private/scan.png", "output": good},
        {"input": good, "output": f"{job}/g/../../private/scan.png"},
        {"input": "other-job/g/0001.png", "output": "other-job/g/0001.png"},
        {"input": f"/{good}", "output": good},
    ]
    Queue(sqs, url).send_many([json.dumps({"v": 2, "job": job, "group": "g", "tiles": [0], "model": str(tiny_model),
                                           "reply": results.url, **keys}) for keys in forged])
    env = base_environment(tmp_path, "forged", {
        "AM_QUEUE_URL": url, "AM_INPUT_BUCKET": "sec-in", "AM_OUTPUT_BUCKET": "sec-out", "AM_MODEL": str(tiny_model),
        "AM_ENDPOINT_URL": moto_server, "AM_IDLE_EXIT_S": "4", "AM_VISIBILITY_TIMEOUT_S": "30", "AM_THREADS": "1"})
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "am.worker"], env=env, cwd=REPO, stdout=log_file,
                                stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
    log = log_path.read_text(errors="replace")

    assert code == 0, log[-3000:]
    assert log.count("rejected message") >= len(forged) * 3, log[-3000:]
    assert "leaves the prefix of job" in log
    assert list(storage.list_keys("sec-out", "")) == [], "a forged message made the worker write"
    assert storage.get_bytes("sec-in", "private/scan.png") == secret_png
    assert results.receive(wait_s=0) == [], "a forged message was reported as a tile"
    deadline = time.monotonic() + 10
    dead: list = []
    while len(dead) < len(forged) and time.monotonic() < deadline:
        dead += Queue(sqs, url).receive(max_messages=10, wait_s=1)  # the receive that moves them
        dead += Queue(sqs, dlq_url).receive(max_messages=10, wait_s=1)
    assert len([m for m in dead if m.receive_count]) >= len(forged)
