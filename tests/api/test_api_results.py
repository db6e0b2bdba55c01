"""Results kept on disk are served by a fresh server: masks, AM id images and tables, and re-queued work."""

from __future__ import annotations

import csv
import io
import logging
import uuid

import cv2
import numpy as np
import pytest
from faults.harness import lattice_image

from am.api.tasks import TaskStore
from am.imageio import write_png, write_tiff

from .servers import running


def lattice_mask(rows: int, cols: int, *, pitch: int = 24, radius: int = 6) -> np.ndarray:
    """0/255 marks only: the lattice image's marks (drawn at exactly 200) without its speckle."""
    return np.where(lattice_image(rows * pitch, cols * pitch, pitch=pitch, radius=radius) == 200,
                    np.uint8(255), np.uint8(0))


def finished_registered_task(store: TaskStore, *, rows: int, cols: int, given_rows: int | None = None) -> str:
    """A task folder as a previous server leaves one: FINISHED, with its mask and registration outputs
    (of a ``rows`` x ``cols`` lattice, submitted with ``given_rows`` rows where that differs)."""
    from am.register import register_group

    mask = lattice_mask(rows, cols)
    upload = store.upload_path().with_suffix(".png")
    write_png(upload, mask)
    given_rows = rows if given_rows is None else given_rows
    task = store.create(upload, rows=given_rows, cols=cols)
    layout = store.layout(task.id)
    write_tiff(layout.source_norm("image"), mask)
    write_tiff(layout.stitched_mask("image"), mask)
    register_group(layout.root, "image", rows=given_rows, cols=cols)
    write_png(store.mask_png(task.id), mask)
    store.update(task.id, status="FINISHED")
    return task.id


def test_a_restarted_server_serves_earlier_results_including_am_ids(tmp_path, tiny_model):
    data = tmp_path / "data"
    store = TaskStore(data)
    task_id = finished_registered_task(store, rows=4, cols=5)
    # Leftovers of a server that died mid-upload are cleaned, not mistaken for tasks.
    (store.uploads_dir / "dead.part").write_bytes(b"half an upload")
    (store.tasks_dir / f".{uuid.uuid4().hex}.abc.tmp").mkdir()

    with running(["am.api", "--data-dir", str(data), "--model", str(tiny_model)], tmp=tmp_path) as server:
        state = server.client.get(f"/tasks/{task_id}").json()
        assert state["status"] == "FINISHED" and state["progress"] == 1.0

        ids_response = server.client.get(f"/ams/{task_id}")
        assert ids_response.status_code == 200 and ids_response.headers["content-type"] == "image/png"
        ids = cv2.imdecode(np.frombuffer(ids_response.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert ids.dtype == np.uint16 and ids.shape == (4 * 24, 5 * 24)
        # id = row * cols + col + 1, row 0 at the top, col 0 at the left.
        assert ids[12, 12] == 1 and ids[12, 4 * 24 + 12] == 5 and ids[3 * 24 + 12, 12] == 16 and ids[0, 0] == 0

        table = server.client.get(f"/ams/{task_id}.csv")
        assert table.status_code == 200 and table.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(table.text)))
        assert len(rows) == 20 and {int(r["id"]) for r in rows} == set(range(1, 21))

        mask = server.client.get(f"/masks/{task_id}")
        assert mask.status_code == 200
        assert not list(store.uploads_dir.iterdir()) and not list(store.tasks_dir.glob(".*"))


def test_head_answers_like_get_without_a_body(tmp_path, tiny_model):
    store = TaskStore(tmp_path / "data")
    task_id = finished_registered_task(store, rows=3, cols=4)
    unknown = uuid.uuid4().hex

    with running(["am.api", "--data-dir", str(tmp_path / "data"), "--model", str(tiny_model)],
                 tmp=tmp_path) as server:
        for path in (f"/masks/{task_id}", f"/ams/{task_id}", f"/ams/{task_id}.csv", f"/tasks/{task_id}",
                     "/tasks", "/health", f"/masks/{unknown}"):
            got, head = server.client.get(path), server.client.head(path)
            assert head.status_code == got.status_code, path
            assert head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path
            assert int(head.headers["content-length"]) == len(got.content) > 0, path
        assert server.client.head(f"/masks/{unknown}").status_code == 404
        # A route without GET still refuses HEAD: POST /invocations, in test_serve.


def test_head_on_a_result_sends_its_headers_without_reading_the_file(tmp_path, monkeypatch):
    import os

    import anyio
    from fastapi.testclient import TestClient

    from am.api.app import create_app
    from am.api.runner import TaskRunner
    from am.settings import Settings

    from .test_runner import FakePipeline

    store = TaskStore(tmp_path / "data")
    task_id = finished_registered_task(store, rows=3, cols=4)
    runner = TaskRunner(store, FakePipeline(Settings()), environ=os.environ, stop_grace_s=10)
    with TestClient(create_app(store, runner)) as client:
        size = len(client.get(f"/masks/{task_id}").content)

        def no_reading(*args, **kwargs):
            raise AssertionError("HEAD opened the file it only describes")

        monkeypatch.setattr(anyio, "open_file", no_reading)
        head = client.head(f"/masks/{task_id}")
        assert head.status_code == 200 and int(head.headers["content-length"]) == size
        # The document lists each route once, HEAD implied by GET.
        paths = client.get("/openapi.json").json()["paths"]
        assert all("head" not in operations for operations in paths.values())
        assert set(paths["/masks/{task_id}"]) == {"get"}


def test_a_finished_task_says_how_many_marks_were_numbered_and_what_to_check(tmp_path, tiny_model):
    store = TaskStore(tmp_path / "data")
    clean = finished_registered_task(store, rows=4, cols=5)
    # Given a row more than the marks fill: registration warns that an edge row is empty.
    doubtful = finished_registered_task(store, rows=4, cols=5, given_rows=5)

    with running(["am.api", "--data-dir", str(tmp_path / "data"), "--model", str(tiny_model)],
                 tmp=tmp_path) as server:
        state = server.client.get(f"/tasks/{clean}").json()
        assert state["marks_numbered"] == 20 and state["warnings"] == []
        state = server.client.get(f"/tasks/{doubtful}").json()
        assert state["marks_numbered"] == 20
        assert any("which edge row is empty is ambiguous" in w for w in state["warnings"]), state["warnings"]
        assert not any("--rows" in w or "--cols" in w for w in state["warnings"]), state["warnings"]

        overlay = server.client.get(f"/overlays/{doubtful}")
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
        picture = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and picture.shape[:2] == (4 * 24, 5 * 24)
        assert server.client.get(f"/overlays/{uuid.uuid4().hex}").status_code == 404


def test_tasks_are_listed_oldest_first_filtered_by_status_and_read_once(tmp_path, monkeypatch):
    import os

    from fastapi.testclient import TestClient

    from am.api.app import create_app
    from am.api.runner import TaskRunner
    from am.api.tasks import GROUP
    from am.register.outputs import JSON_NAME
    from am.settings import Settings

    from .test_runner import FakePipeline

    store = TaskStore(tmp_path / "data")
    first = finished_registered_task(store, rows=3, cols=4)
    second = finished_registered_task(store, rows=4, cols=5)
    failed = finished_registered_task(store, rows=2, cols=2)
    store.update(failed, status="FAILED", error="registration failed")
    runner = TaskRunner(store, FakePipeline(Settings()), environ=os.environ, stop_grace_s=10)
    with TestClient(create_app(store, runner)) as client:
        listed = client.get("/tasks").json()["tasks"]
        assert [t["id"] for t in listed] == [first, second, failed]
        assert [t["marks_numbered"] for t in listed] == [12, 20, None]
        assert listed[1] == client.get(f"/tasks/{second}").json()
        assert [t["id"] for t in client.get("/tasks", params={"status": "FAILED"}).json()["tasks"]] == [failed]
        assert client.get("/tasks", params={"status": "QUEUED"}).json() == {"tasks": []}
        refused = client.get("/tasks", params={"status": "DONE"})
        assert refused.status_code == 400 and "query.status: Input should be 'QUEUED'" in refused.json()["detail"]
        assert client.head("/tasks").status_code == 200

        # A finished task's registration record is read once, not on every poll.
        (store.layout(second).am_coords_dir(GROUP) / JSON_NAME).unlink()
        assert client.get(f"/tasks/{second}").json()["marks_numbered"] == 20
        assert client.delete(f"/tasks/{first}").status_code == 204
        assert [t["id"] for t in client.get("/tasks").json()["tasks"]] == [second, failed]


def test_a_task_deleted_while_tasks_are_listed_is_left_out_quietly(tmp_path, monkeypatch, caplog):
    store = TaskStore(tmp_path / "data")
    gone, kept = finished_registered_task(store, rows=2, cols=2), finished_registered_task(store, rows=2, cols=3)
    get = TaskStore.get

    def deleted_first(self: TaskStore, task_id: str):
        if task_id == gone:
            self.delete(gone)
        return get(self, task_id)

    monkeypatch.setattr(TaskStore, "get", deleted_first)
    with caplog.at_level("WARNING"):
        assert [task.id for task in store.all()] == [kept]
    assert "skipping" not in caplog.text


@pytest.mark.parametrize("status", ["FINISHED", "FAILED"])
def test_a_task_deleted_after_the_listing_read_it_is_left_out_without_a_warning(tmp_path, monkeypatch, caplog,
                                                                               status):
    """DELETE between the scan of the tasks and the making of their views: a FINISHED task's registration
    record is gone (no warning about it), a FAILED one's folder would read as a task with no progress."""
    import os

    from fastapi.testclient import TestClient

    from am.api.app import create_app
    from am.api.runner import TaskRunner
    from am.settings import Settings

    from .test_runner import FakePipeline

    store = TaskStore(tmp_path / "data")
    gone, kept = finished_registered_task(store, rows=2, cols=2), finished_registered_task(store, rows=2, cols=3)
    if status == "FAILED":
        store.update(gone, status="FAILED", error="registration failed")
    scan = TaskStore.all

    def deleted_after_the_scan(self: TaskStore) -> list:
        tasks = scan(self)
        self.delete(gone)
        return tasks

    runner = TaskRunner(store, FakePipeline(Settings()), environ=os.environ, stop_grace_s=10)
    with TestClient(create_app(store, runner)) as client:
        monkeypatch.setattr(TaskStore, "all", deleted_after_the_scan)
        with caplog.at_level("WARNING"):
            listed = client.get("/tasks")
        monkeypatch.undo()
        assert listed.status_code == 200
        assert [t["id"] for t in listed.json()["tasks"]] == [kept]
        assert listed.json()["tasks"][0]["marks_numbered"] == 6
        assert client.get(f"/tasks/{gone}").status_code == 404
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text

