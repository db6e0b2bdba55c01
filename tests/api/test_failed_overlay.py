"""GET /overlays/<id> of a task whose registration failed: the segmentation overlay a person needs to
fix rows and cols (the pipeline's own advice for that failure), with the header naming which overlay
is sent; 409 only when the task failed before any overlay was made."""

from __future__ import annotations

import os

import cv2
import numpy as np
from fastapi.testclient import TestClient

from am.api.app import OVERLAY_HEADER, create_app
from am.api.runner import TaskRunner
from am.api.tasks import GROUP, TaskStore
from am.imageio import write_png
from am.settings import Settings
from tests.real_samples import real_sample

from .servers import TILE, running
from .test_api_results import finished_registered_task, lattice_mask
from .test_api_tasks import submit, wait_for
from .test_runner import FakePipeline, api


def _get_and_head(client: TestClient, path: str):
    got, head = client.get(path), client.head(path)
    assert head.status_code == got.status_code and head.content == b"", path
    for name in ("content-type", OVERLAY_HEADER):
        assert head.headers.get(name) == got.headers.get(name), name
    return got


def test_a_task_whose_registration_failed_serves_its_segmentation_overlay_and_says_so(tmp_path):
    with api(tmp_path, mode="misfit") as server:
        task_id = server.submit(rows=60, cols=60)
        state = server.wait(task_id)
        overlay = _get_and_head(server.client, f"/overlays/{task_id}")
        written = server.store.layout(task_id).stitched_overlay(GROUP).read_bytes()
    assert state["status"] == "FAILED"
    # The task's own JSON points at it, as it does at the mask.
    assert f"GET /overlays/{task_id}" in state["error"]
    assert overlay.status_code == 200, overlay.text
    assert overlay.headers["content-type"] == "image/png" and overlay.headers[OVERLAY_HEADER] == "segmentation"
    assert overlay.content == written


def test_a_task_that_failed_before_any_overlay_was_made_answers_409_saying_why(tmp_path):
    with api(tmp_path, mode="fail") as server:
        task_id = server.submit(rows=60, cols=60)
        state = server.wait(task_id)
        refused = _get_and_head(server.client, f"/overlays/{task_id}")
    assert state["status"] == "FAILED" and "/overlays/" not in state["error"]
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert "failed before its image was segmented, so it has no overlay" in detail
    assert "the fake pipeline failed on purpose" in detail


def test_a_queued_or_running_task_still_has_no_overlay(tmp_path):
    with api(tmp_path, mode="wait") as server:
        task_id = server.submit()
        server.wait(task_id, until=("RUNNING",))
        refused = server.client.get(f"/overlays/{task_id}")
        server.release(task_id)
        server.wait(task_id)
    assert refused.status_code == 409 and "poll GET /tasks/<id> until FINISHED" in refused.json()["detail"]


def test_the_header_names_the_registration_overlay_once_marks_are_numbered(tmp_path):
    store = TaskStore(tmp_path / "data")
    registered = finished_registered_task(store, rows=3, cols=4)
    # Registered, then the run failed after it: the numbered overlay is still the one to look at.
    failed_after = finished_registered_task(store, rows=3, cols=4)
    store.update(failed_after, status="FAILED", error="the stitched mask cannot be served: disk full")
    # Without rows and cols there is only the segmentation overlay.
    upload = store.upload_path().with_suffix(".png")
    write_png(upload, lattice_mask(3, 4))
    plain = store.create(upload).id
    write_png(store.layout(plain).stitched_overlay(GROUP), lattice_mask(3, 4))
    store.update(plain, status="FINISHED")

    runner = TaskRunner(store, FakePipeline(Settings()), environ=os.environ, stop_grace_s=10)
    with TestClient(create_app(store, runner)) as client:
        whichs = {task_id: _get_and_head(client, f"/overlays/{task_id}").headers[OVERLAY_HEADER]
                  for task_id in (registered, failed_after, plain)}
        document = client.get("/openapi.json").json()["paths"]["/overlays/{task_id}"]["get"]
    assert whichs == {registered: "registration", failed_after: "registration", plain: "segmentation"}
    assert OVERLAY_HEADER in document["responses"]["200"]["headers"]
    assert "FAILED" in document["description"] and OVERLAY_HEADER in document["description"]


def test_the_real_tile_b_submitted_with_the_wrong_grid_fails_and_serves_its_overlay(tmp_path, tiny_model):
    """The reviewer's case over real HTTP with the real pipeline: tile_b's lattice is not 20 x 20."""
    body = real_sample("tile_b_512.png").read_bytes()
    args = ["am.api", "--data-dir", str(tmp_path / "data"), "--model", str(tiny_model), "--workers", "1",
            "--max-bytes", str(4 * len(body)), *TILE]
    with running(args, tmp=tmp_path, name="api") as server:
        task_id = submit(server, body, rows=20, cols=20)
        final = wait_for(server, task_id)[-1]
        assert final["status"] == "FAILED", server.log_text()[-4000:]
        assert f"GET /overlays/{task_id}" in final["error"]
        overlay = _get_and_head(server.client, f"/overlays/{task_id}")
        assert server.client.get(f"/masks/{task_id}").status_code == 200
    assert overlay.status_code == 200 and overlay.headers[OVERLAY_HEADER] == "segmentation", overlay.text
    picture = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
    source = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert picture.shape[:2] == source.shape[:2]
