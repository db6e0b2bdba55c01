"""The task runner under faults: the real app, store and runner, with a fake pipeline script (fake_pipeline.py).

In-process (FastAPI's TestClient), so a test can fill the disk for task.json, hold the runner in
the middle of exporting a mask, or kill its thread, and watch what a client sees.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import am.api.runner as runner_module
import am.api.tasks as tasks_module
from am.api.app import create_app
from am.api.runner import PipelineCommand, TaskRunner, api_words, failure_reason
from am.api.tasks import TASK_FILE, TaskStore
from am.settings import Settings
from tests.waiting import wait_until

from .servers import png_bytes

FAKE_PIPELINE = Path(__file__).with_name("fake_pipeline.py")
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FakePipeline(PipelineCommand):
    """The runner's command, pointing at the fake pipeline script."""

    mode: str = "ok"

    def argv(self, dataset: Path, *, rows: int | None, cols: int | None) -> list[str]:
        return [sys.executable, str(FAKE_PIPELINE), str(dataset), self.mode]


@dataclass
class Api:
    client: TestClient
    store: TaskStore
    runner: TaskRunner

    def submit(self, **grid: int) -> str:
        image = np.random.default_rng(0).integers(0, 256, (60, 80), dtype=np.uint8)
        response = self.client.post("/tasks", content=png_bytes(image), headers={"Content-Type": "image/png"},
                                    params=grid)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def state(self, task_id: str) -> dict:
        return self.client.get(f"/tasks/{task_id}").json()

    def wait(self, task_id: str, *, until: tuple[str, ...] = ("FINISHED", "FAILED")) -> dict:
        seen: list[dict] = []

        def ended() -> dict | None:
            seen.append(self.state(task_id))
            return seen[-1] if seen[-1].get("status") in until else None

        return wait_until(ended, timeout=TIMEOUT_S, what=f"task {task_id} to be {' or '.join(until)}",
                          detail=lambda: f"it is still {seen[-1]}")

    def release(self, task_id: str) -> None:
        """Let a task of the ``wait`` fake pipeline go on."""
        (self.store.task_dir(task_id) / "go").touch()


@contextmanager
def api(tmp_path: Path, *, mode: str = "ok", settings: Settings | None = None) -> Iterator[Api]:
    store = TaskStore(tmp_path / "data")
    runner = TaskRunner(store, FakePipeline(settings or Settings(), mode=mode), environ=os.environ, stop_grace_s=10)
    with TestClient(create_app(store, runner, max_bytes=1_000_000), raise_server_exceptions=False) as client:
        yield Api(client, store, runner)


def until(condition, what: str) -> None:
    wait_until(condition, timeout=TIMEOUT_S, what=what)


def test_a_runner_thread_outlives_a_task_whose_outcome_cannot_be_written(tmp_path, monkeypatch, caplog):
    """A full disk while a task ends: logged, retried, and the next task still runs."""
    disk_full = threading.Event()
    write = tasks_module.write_atomic

    def write_unless_full(path: Path, data: bytes) -> None:
        if disk_full.is_set() and path.name == TASK_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, data)

    monkeypatch.setattr(tasks_module, "write_atomic", write_unless_full)
    caplog.set_level(logging.INFO, logger="am.api.runner")
    with api(tmp_path, mode="wait") as server:
        first = server.submit()
        server.wait(first, until=("RUNNING",))
        disk_full.set()
        server.release(first)
        until(lambda: any("cannot record its outcome" in r.getMessage() for r in caplog.records),
              "logged that the outcome cannot be recorded")
        failure = next(r for r in caplog.records if "cannot record its outcome" in r.getMessage())
        assert failure.levelno == logging.ERROR and failure.exc_info, "logged with its traceback"
        assert server.state(first)["status"] == "RUNNING", "task.json could not change"

        disk_full.clear()
        second = server.submit()
        server.release(second)
        assert server.wait(second)["status"] == "FINISHED", "the thread still runs tasks"
        # The outcome that could not be written was written before the next task started.
        assert server.state(first)["status"] == "FINISHED"
        health = server.client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"


def test_health_is_503_with_the_reason_when_a_runner_thread_has_died(tmp_path, monkeypatch):
    class ThreadKiller(BaseException):
        """Not an Exception, so no per-task handler stops it: what it takes to kill the thread."""

    with api(tmp_path) as server:
        def claim(task_id: str) -> None:
            raise ThreadKiller("simulated death of the thread")

        monkeypatch.setattr(server.runner, "_claim", claim)
        assert server.client.get("/health").status_code == 200
        server.submit()
        until(lambda: server.client.get("/health").status_code == 503, "unhealthy")
        body = server.client.get("/health").json()
        assert body["status"] == "unhealthy"
        assert "am-api-runner-0" in body["reason"] and "ThreadKiller: simulated death" in body["reason"]
        assert "restart the server" in body["reason"]


def test_any_exception_from_one_task_fails_that_task_only(tmp_path, monkeypatch, caplog):
    calls = []
    export = TaskRunner._export_mask

    def export_once_broken(self: TaskRunner, task_id: str) -> bool:
        calls.append(task_id)
        if len(calls) == 1:
            raise KeyError("a bug in the export")
        return export(self, task_id)

    monkeypatch.setattr(TaskRunner, "_export_mask", export_once_broken)
    with api(tmp_path) as server:
        first = server.submit()
        state = server.wait(first)
        assert state["status"] == "FAILED" and "KeyError" in state["error"] and "a bug in the export" in state["error"]
        assert any(r.exc_info and "could not be run" in r.getMessage() for r in caplog.records)
        second = server.submit()
        assert server.wait(second)["status"] == "FINISHED"


def test_a_resumed_task_killed_without_an_error_line_does_not_report_the_previous_runs_error(tmp_path):
    store = TaskStore(tmp_path / "data")
    upload = store.upload_path().with_suffix(".png")
    upload.write_bytes(png_bytes(np.zeros((60, 80), np.uint8)))
    task = store.create(upload)
    # What an earlier run left in the task's log before the server stopped it.
    store.log_path(task.id).write_text("12:00:00 INFO am.pipeline: run 1\n"
                                       "12:00:01 ERROR am.pipeline: interrupted; stale error of the previous run\n")
    with api(tmp_path, mode="kill") as server:
        state = server.wait(task.id)
    assert state["status"] == "FAILED"
    assert state["error"].startswith("the pipeline failed (killed by signal 9)"), state["error"]
    assert "stale" not in state["error"]


def test_failure_reason_searches_only_from_where_this_run_started(tmp_path):
    log = tmp_path / "pipeline.log"
    earlier = "12:00:00 ERROR am.pipeline: the earlier run's error\n"
    log.write_text(earlier + "12:00:05 INFO am.pipeline: resumed\n")
    assert failure_reason(log, -9) == "the earlier run's error"
    reason = failure_reason(log, -9, start=len(earlier))
    assert reason == "the pipeline failed (killed by signal 9)"
    assert failure_reason(log, 3, start=log.stat().st_size) == "the pipeline failed (exit code 3)"


def test_a_run_killed_after_a_progress_line_names_no_server_folder(tmp_path):
    # Killed (the OOM killer) just after it started its workers: their log lies in a server folder.
    log = tmp_path / "pipeline.log"
    log.write_text("12:00:00 INFO am.pipeline: started worker 0 (pid 2581), log /tmp/am-segm-workers-x/worker-0.log\n")
    assert failure_reason(log, -9) == "the pipeline failed (killed by signal 9)"
    log.write_text("12:00:01 WARNING am.prepare: ignoring damaged tile plan /srv/am/tasks/a/meta.json (x)\n")
    assert failure_reason(log, -9) == "the pipeline failed (killed by signal 9)"
    # The last line of a traceback says what went wrong: kept.
    log.write_text("12:00:00 INFO am.pipeline: normalising\nTraceback (most recent call last):\nMemoryError\n")
    assert failure_reason(log, 1) == "the pipeline failed (exit code 1): MemoryError"


def test_failure_reason_gives_every_error_of_the_run_in_order(tmp_path):
    # A failed group's reason comes before the summary that says "errors above", which an API client
    # cannot read: both are the task's error.
    log = tmp_path / "pipeline.log"
    log.write_text("12:00:00 INFO am.pipeline: registering\n"
                   "12:00:01 ERROR am.register: group image: the grid was given 60 x 60 positions\n"
                   "12:00:01 INFO am.pipeline: summary follows\n"
                   "12:00:02 ERROR am.pipeline: registration failed for 1 of 1 group(s): image (errors above)\n"
                   "  worker 0: last line\n")
    assert failure_reason(log, 1) == ("group image: the grid was given 60 x 60 positions\n"
                                      "registration failed for 1 of 1 group(s): image (errors above)\n"
                                      "  worker 0: last line")


def test_deleting_a_task_while_its_mask_is_exported_leaves_nothing_behind(tmp_path, monkeypatch):
    exporting, deleted = threading.Event(), threading.Event()
    read = runner_module.read_image

    def read_then_wait_for_the_delete(path: Path) -> np.ndarray:
        image = read(path)
        if not exporting.is_set():
            exporting.set()
            assert deleted.wait(TIMEOUT_S), "the test did not delete the task"
        return image

    monkeypatch.setattr(runner_module, "read_image", read_then_wait_for_the_delete)
    with api(tmp_path) as server:
        doomed = server.submit()
        assert exporting.wait(TIMEOUT_S), "the pipeline exited 0 and the runner exports its mask"
        assert server.state(doomed)["status"] == "RUNNING"
        assert server.client.delete(f"/tasks/{doomed}").status_code == 204
        deleted.set()
        # One runner thread: once the next task has finished, the export of the deleted one is over.
        kept = server.submit()
        assert server.wait(kept)["status"] == "FINISHED"
        assert server.client.get(f"/tasks/{doomed}").status_code == 404
        assert sorted(p.name for p in server.store.tasks_dir.iterdir()) == [kept]
        assert server.client.get(f"/masks/{kept}").status_code == 200


def test_health_counts_only_tasks_that_will_run_and_deleted_ids_are_not_kept(tmp_path):
    with api(tmp_path, mode="wait") as server:
        running = server.submit()
        server.wait(running, until=("RUNNING",))
        waiting = [server.submit() for _ in range(3)]
        assert server.client.get("/health").json()["queued"] == 3
        for task_id in waiting[:2]:
            assert server.client.delete(f"/tasks/{task_id}").status_code == 204
        health = server.client.get("/health").json()
        assert (health["queued"], health["running"]) == (1, 1)

        server.release(running)
        server.release(waiting[2])
        assert server.wait(running)["status"] == "FINISHED"
        assert server.wait(waiting[2])["status"] == "FINISHED"
        # Deleting finished tasks has nothing to stop: their ids need not be remembered either.
        for task_id in (running, waiting[2]):
            assert server.client.delete(f"/tasks/{task_id}").status_code == 204
        assert server.client.get("/health").json()["queued"] == 0
        until(lambda: not server.runner._cancelled, "forgotten: every deleted id was dropped from the queue")


@pytest.mark.parametrize("mode, words", [("fail", "the fake pipeline failed on purpose"),
                                         ("kill", "killed by signal 9")])
def test_a_failed_pipeline_is_reported_with_its_reason(tmp_path, mode, words):
    with api(tmp_path, mode=mode) as server:
        state = server.wait(server.submit())
    assert state["status"] == "FAILED" and words in state["error"]


@pytest.mark.parametrize("mode, reason, advice", [
    ("misfit", "check rows and cols", "If rows and cols were not those of the acquisition grid, submit the image "
                                      "again with the right ones."),
    ("blank", "the 80 x 60 px mask is empty", "It holds too few marks to number: check that the image shows the "
                                              "ablation marks."),
])
def test_a_failed_registration_keeps_the_mask_and_advises_in_the_apis_words(tmp_path, mode, reason, advice):
    with api(tmp_path, mode=mode) as server:
        task_id = server.submit(rows=60, cols=60)
        state = server.wait(task_id)
        assert server.client.get(f"/masks/{task_id}").status_code == 200
    assert state["status"] == "FAILED"
    assert state["error"].startswith("registration failed: ") and reason in state["error"]
    assert state["error"].endswith(f"The mask was made: GET /masks/{task_id}; GET /overlays/{task_id} draws it "
                                   f"over the image. {advice}")
    assert "--rows" not in state["error"] and "--cols" not in state["error"]


def test_a_failed_runs_log_is_read_once_for_its_reason_and_its_registration(tmp_path, monkeypatch):
    reads: list[Path] = []
    tail = runner_module._log_tail

    def counted(log_path: Path, start: int) -> list[str]:
        reads.append(log_path)
        return tail(log_path, start)

    monkeypatch.setattr(runner_module, "_log_tail", counted)
    with api(tmp_path, mode="misfit") as server:
        task_id = server.submit(rows=60, cols=60)
        state = server.wait(task_id)
    assert state["error"].startswith("registration failed: ") and "check rows and cols" in state["error"]
    assert reads == [server.store.log_path(task_id)]


def test_registrations_advice_on_an_empty_mask_reads_in_the_apis_words():
    from am.register.registration import RegistrationError, register_mask

    with pytest.raises(RegistrationError) as refused:
        register_mask(np.zeros((60, 80), np.uint8), rows=None, cols=None)
    assert "rerun python -m am.pipeline with --scale" in str(refused.value)
    said = api_words(str(refused.value))
    assert said.endswith("far larger or smaller than the model's, the server's --scale") and "python -m" not in said


@pytest.mark.parametrize("scale", ["auto", 0.5])
def test_the_pipeline_command_carries_the_servers_scale_as_the_pipeline_parses_it(tmp_path, scale):
    from am.pipeline.__main__ import build_parser

    argv = PipelineCommand(Settings(scale=scale)).argv(tmp_path / "ds", rows=4, cols=5)
    assert argv[argv.index("--scale") + 1] == str(scale)
    parsed = build_parser().parse_args(argv[3:])
    assert parsed.scale == scale and (parsed.rows, parsed.cols) == (4, 5)


@pytest.mark.parametrize("scale, side, accepted", [(0.5, 50, False), (0.5, 64, True), ("auto", 32, True),
                                                   (2.0, 20, True), (1.0, 31, False)])
def test_an_image_too_small_at_the_servers_scale_is_a_400(tmp_path, scale, side, accepted):
    """A 50 px image on a server at scale 0.5 is 25 px to the model: refused at upload, not a task that fails."""
    image = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    with api(tmp_path, settings=Settings(scale=scale)) as server:
        response = server.client.post("/tasks", content=png_bytes(image), headers={"Content-Type": "image/png"})
        assert response.status_code == (201 if accepted else 400), response.text
        if not accepted:
            detail = response.json()["detail"]
            assert f"{side} x {side} px" in detail and "at least 32 px" in detail
            assert ("at this server's scale 0.5" in detail) == (scale == 0.5)
        assert len(list(server.store.tasks_dir.iterdir())) == int(accepted)


def test_rows_or_cols_given_twice_are_a_400(tmp_path):
    """Only the last would count, silently, and a grid of the wrong shape numbers every mark wrongly."""
    image = np.random.default_rng(0).integers(0, 256, (60, 80), dtype=np.uint8)
    with api(tmp_path) as server:
        response = server.client.post("/tasks?rows=9&cols=9&rows=4", content=png_bytes(image),
                                      headers={"Content-Type": "image/png"})
        assert response.status_code == 400 and "rows given more than once" in response.json()["detail"]
        assert not list(server.store.tasks_dir.iterdir())
