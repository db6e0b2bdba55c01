"""What the task API says about query parameters, ids and records it cannot use: nothing is dropped silently."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from am.api.tasks import TASK_FILE

from .servers import png_bytes
from .test_runner import api


def test_unknown_or_repeated_parameters_are_refused_by_name(tmp_path):
    body = png_bytes(np.zeros((60, 80), np.uint8))
    with api(tmp_path) as server:
        # A misspelt rows would give a task whose marks are never numbered.
        refused = server.client.post("/tasks?row=8&col=9", content=body, headers={"Content-Type": "image/png"})
        assert refused.status_code == 400
        assert refused.json()["detail"] == "unknown query parameter(s) col, row: POST /tasks takes rows and cols"
        listed = server.client.get("/tasks?status=FINISHED&status=FAILED")
        assert listed.status_code == 400 and listed.json()["detail"] == "status given more than once; give each once"
        misspelt = server.client.get("/tasks?staus=FAILED")
        assert misspelt.status_code == 400 and "unknown query parameter(s) staus" in misspelt.json()["detail"]
        assert not list(server.store.tasks_dir.iterdir()) and not list(server.store.uploads_dir.iterdir())
        # Routes that take none refuse any: a client's "dry run" must not delete.
        task_id = server.submit()
        server.wait(task_id)
        refused = server.client.delete(f"/tasks/{task_id}?dry_run=1")
        assert refused.status_code == 400
        assert refused.json()["detail"] == f"unknown query parameter(s) dry_run: DELETE /tasks/{task_id} takes no " \
                                           "parameters"
        assert server.state(task_id)["status"] == "FINISHED"
        for path in (f"/tasks/{task_id}?row=8", f"/masks/{task_id}?x=1", "/health?verbose=1"):
            assert server.client.get(path).status_code == 400, path
        assert server.client.head("/tasks?status=FINISHED").status_code == 200


def test_an_id_with_a_trailing_newline_is_malformed(tmp_path):
    with api(tmp_path) as server:
        task_id = server.submit()
        server.wait(task_id)
        for method in ("GET", "DELETE"):
            response = server.client.request(method, f"/tasks/{task_id}%0A")
            assert response.status_code == 400 and "control character" in response.json()["detail"], method
        assert server.state(task_id)["status"] == "FINISHED"


def test_a_mask_only_task_is_told_at_once_that_its_marks_are_not_numbered(tmp_path):
    with api(tmp_path, mode="wait") as server:
        task_id = server.submit()
        server.wait(task_id, until=("RUNNING",))
        for path in (f"/ams/{task_id}", f"/ams/{task_id}.csv"):
            response = server.client.get(path)
            assert response.status_code == 409 and "submitted without rows and cols" in response.json()["detail"]
        server.release(task_id)
        server.wait(task_id)


# What a task record may hold that no server wrote: JSON that does not parse, bytes that are not
# UTF-8, a field of the wrong type (which each view, listing and run of the task would fail on), and
# another task's id.
DAMAGE = {
    "not json": lambda record: b"{not json",
    "not utf-8": lambda record: b"\xff\xfe" + record,
    "a time in words": lambda record: json.dumps({**json.loads(record), "created": "yesterday"}).encode(),
    "rows of zero": lambda record: json.dumps({**json.loads(record), "rows": 0}).encode(),
    "a time of 400 digits": lambda record: json.dumps({**json.loads(record), "updated": 10**400}).encode(),
    "brackets nested past the stack": lambda record: b"[" * 200_000,
    "another id": lambda record: json.dumps({**json.loads(record), "id": "0" * 32}).encode(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_task_record_is_the_servers_fault_names_no_folder_and_can_be_deleted(damage, tmp_path, caplog):
    with api(tmp_path) as server:
        task_id = server.submit()
        server.wait(task_id)
        record = server.store.task_dir(task_id) / TASK_FILE
        record.write_bytes(DAMAGE[damage](record.read_bytes()))
        with caplog.at_level(logging.ERROR):
            response = server.client.get(f"/tasks/{task_id}")
        assert response.status_code == 500
        detail = response.json()["detail"]
        assert detail.startswith(f"task {task_id} has a damaged record on the server (")
        assert detail.endswith(f"delete it (DELETE /tasks/{task_id}) and submit the image again")
        assert str(tmp_path) not in detail and str(record) in caplog.text, "the path is for the server's log only"
        assert server.client.get("/tasks").json() == {"tasks": []}
        assert server.client.delete(f"/tasks/{task_id}").status_code == 204
        assert not server.store.task_dir(task_id).exists()
        assert server.client.get(f"/tasks/{task_id}").status_code == 404


def test_a_server_starts_beside_a_damaged_record_and_lists_the_other_tasks(tmp_path):
    # Restarted on its data folder, the server reads every record to resume its tasks: one that is
    # not UTF-8 stopped it from starting at all.
    with api(tmp_path) as server:
        damaged, kept = server.submit(), server.submit()
        server.wait(damaged)
        server.wait(kept)
        record = server.store.task_dir(damaged) / TASK_FILE
        record.write_bytes(b"\xff\xfe" + record.read_bytes())
    with api(tmp_path) as server:
        assert [task["id"] for task in server.client.get("/tasks").json()["tasks"]] == [kept]
        assert server.client.get(f"/tasks/{damaged}").status_code == 500
        assert server.client.delete(f"/tasks/{damaged}").status_code == 204


def test_a_range_the_file_cannot_serve_is_a_json_error_and_a_good_one_is_served(tmp_path):
    # FileResponse answers these itself: plain text, out of reach of the API's error handler.
    with api(tmp_path) as server:
        task_id = server.submit()
        server.wait(task_id)
        whole = server.client.get(f"/masks/{task_id}").content
        for asked in ("bytes=abc", "bytes=5-2"):
            response = server.client.get(f"/masks/{task_id}", headers={"Range": asked})
            assert response.status_code == 400 and response.headers["content-type"] == "application/json"
            assert response.json()["detail"].startswith(f"the Range header {asked!r} is malformed")
        response = server.client.get(f"/masks/{task_id}", headers={"Range": "bytes=999999999-"})
        assert response.status_code == 416 and response.headers["content-type"] == "application/json"
        size = response.headers["content-range"].removeprefix("bytes */")
        assert f"past the end of the file ({size} bytes)" in response.json()["detail"]
        part = server.client.get(f"/masks/{task_id}", headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and part.content == whole[:10]
