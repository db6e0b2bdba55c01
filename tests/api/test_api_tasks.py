"""The task API over real HTTP: a ``python -m am.api`` process running real pipelines with a tiny model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import tifffile

from tests.images.tiffs import tiff_bytes
from tests.waiting import wait_until

from .servers import TILE, Server, free_port, png_bytes, running, server_environment

MAX_BYTES = 200_000
TASK_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def api_dirs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("api")
    return base, base / "data"


def api_args(data_dir: Path, model: Path, *, concurrency: int = 2) -> list[str]:
    return ["am.api", "--data-dir", str(data_dir), "--model", str(model), "--workers", "1",
            "--concurrency", str(concurrency), "--max-bytes", str(MAX_BYTES), "--log-level", "INFO", *TILE]


@pytest.fixture(scope="module")
def api(api_dirs, tiny_model):
    base, data = api_dirs
    with running(api_args(data, tiny_model), tmp=base, name="api") as server:
        yield server


def submit(server: Server, body: bytes, *, content_type: str = "image/png", **params: int) -> str:
    response = server.client.post("/tasks", content=body, headers={"Content-Type": content_type}, params=params)
    assert response.status_code == 201, response.text
    location = response.headers["location"]
    assert location.startswith("/tasks/")
    return location.removeprefix("/tasks/")


def wait_for(server: Server, task_id: str, *, until: tuple[str, ...] = ("FINISHED", "FAILED")) -> list[dict]:
    """Poll the task until its status is one of ``until``; returns every state seen."""
    seen: list[dict] = []

    def ended() -> bool:
        response = server.client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        state = response.json()
        if not seen or state != seen[-1]:
            seen.append(state)
        return state["status"] in until

    wait_until(ended, timeout=TASK_TIMEOUT_S, poll_s=0.3, what=f"task {task_id} to be {' or '.join(until)}",
               detail=lambda: f"it is still {seen[-1]}\n{server.log_text()[-4000:]}")
    return seen


@dataclass
class Batch:
    """Three tasks submitted at once (the third a 16-bit TIFF with rows and cols), followed to their end."""

    bodies: list[bytes]
    ids: list[str]
    seen: dict[str, list[dict]]
    most_running: int
    concurrency: int


@pytest.fixture(scope="module")
def batch(api, lattice) -> Batch:
    uploads = [(png_bytes(lattice), "image/png", {}),
               (png_bytes(np.roll(lattice, 7, axis=1)), "image/png", {}),
               (tiff_bytes(lattice.astype(np.uint16) * 250), "image/tiff", {"rows": 5, "cols": 6})]
    ids: list[str] = [""] * len(uploads)

    def post(index: int) -> None:
        body, content_type, params = uploads[index]
        ids[index] = submit(api, body, content_type=content_type, **params)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(uploads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(ids), "every submission was accepted"
    seen: dict[str, list[dict]] = {task_id: [] for task_id in ids}
    healths: list[dict] = []

    def all_ended() -> bool:
        healths.append(api.client.get("/health").json())
        for task_id in ids:
            state = api.client.get(f"/tasks/{task_id}").json()
            if not seen[task_id] or seen[task_id][-1] != state:
                seen[task_id].append(state)
        return all(seen[t][-1]["status"] in ("FINISHED", "FAILED") for t in ids)

    wait_until(all_ended, timeout=TASK_TIMEOUT_S, poll_s=0.3, what="the three tasks to end",
               detail=lambda: f"{ {t: seen[t][-1] for t in ids} }\n{api.log_text()[-4000:]}")
    most_running = max(h["running"] for h in healths)
    return Batch([u[0] for u in uploads], ids, seen, most_running, healths[-1]["concurrency"])


def test_task_life_cycle_from_upload_to_mask_to_delete(api, batch, lattice, api_dirs):
    task_id = batch.ids[0]
    assert len(task_id) == 32 and int(task_id, 16) >= 0
    seen = batch.seen[task_id]
    final = seen[-1]
    assert final["status"] == "FINISHED", (final, api.log_text()[-4000:])
    assert final["progress"] == 1.0 and final["error"] is None
    assert {s["status"] for s in seen} <= {"QUEUED", "RUNNING", "FINISHED"}
    assert all(s["progress"] is None or 0.0 <= s["progress"] <= 1.0 for s in seen)

    mask_response = api.client.get(f"/masks/{task_id}")
    assert mask_response.status_code == 200
    assert mask_response.headers["content-type"] == "image/png"
    mask = cv2.imdecode(np.frombuffer(mask_response.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == lattice.shape and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    # What is served is the pipeline's stitched mask of this very task, in its dataset folder.
    stitched = tifffile.imread(api_dirs[1] / "tasks" / task_id / "tiles_stitched" / "image" / "mask.tiff")
    np.testing.assert_array_equal(mask, stitched)

    # No rows/cols were given: there are no AM ids, and the answer says why.
    for path in (f"/ams/{task_id}", f"/ams/{task_id}.csv"):
        refused = api.client.get(path)
        assert refused.status_code == 409 and "rows" in refused.json()["detail"]

    assert api.client.delete(f"/tasks/{task_id}").status_code == 204
    assert not (api_dirs[1] / "tasks" / task_id).exists()
    for method, path in (("GET", f"/tasks/{task_id}"), ("GET", f"/masks/{task_id}"), ("DELETE", f"/tasks/{task_id}")):
        assert api.client.request(method, path).status_code == 404


def test_concurrent_submissions_all_run_with_at_most_concurrency_at_a_time(api, batch):
    assert len(set(batch.ids)) == len(batch.ids)
    assert batch.seen[batch.ids[1]][-1]["status"] == "FINISHED", api.log_text()[-4000:]
    assert 1 <= batch.most_running <= batch.concurrency == 2
    mask = cv2.imdecode(np.frombuffer(api.client.get(f"/masks/{batch.ids[1]}").content, np.uint8),
                        cv2.IMREAD_UNCHANGED)
    assert mask.shape == (150, 190)


def test_tiff_upload_with_rows_and_cols_reports_the_registration_outcome(api, batch, lattice):
    task_id = batch.ids[2]
    final = batch.seen[task_id][-1]
    assert final["rows"] == 5 and final["cols"] == 6
    if final["status"] == "FINISHED":
        ids = cv2.imdecode(np.frombuffer(api.client.get(f"/ams/{task_id}").content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert ids.dtype == np.uint16 and ids.shape == lattice.shape
        assert api.client.get(f"/ams/{task_id}.csv").text.startswith("id,row,col,x,y,area_px")
    else:
        # The tiny test model is untrained, so registration may rightly refuse its mask: the reason
        # is the pipeline's own message, and the result endpoints answer 409 quoting it.
        assert final["status"] == "FAILED" and final["error"], api.log_text()[-4000:]
        refused = api.client.get(f"/ams/{task_id}")
        assert refused.status_code == 409 and final["error"][:40] in refused.json()["detail"]


def test_a_grid_that_does_not_fit_fails_the_task_but_keeps_its_mask(api, api_dirs, lattice):
    # 60 x 60 positions for a 5 x 6 lattice (and the tiny untrained model's mask): registration refuses it
    # after the mask was stitched.
    # The mask is still served, and the error names neither the server's folders nor the CLI's options.
    task_id = submit(api, png_bytes(lattice), rows=60, cols=60)
    final = wait_for(api, task_id)[-1]
    assert final["status"] == "FAILED", api.log_text()[-4000:]
    error = final["error"]
    # The advice follows the reason: the tiny model's mask may hold too few marks for any grid.
    advice = ("too few marks to number" if "are needed to fit a grid" in error else
              "submit the image again with the right ones")
    assert f"GET /masks/{task_id}" in error and advice in error
    assert error.startswith("registration failed: ")  # the reason, not only the summary after it
    # Once, and without the run's printed summary or the command line's advice.
    assert error.count("registration failed") == 1
    for printed in ("groups: ", "tiles: ", "time: ", "--rows", "overlay.png", "--scale"):
        assert printed not in error, printed
    assert str(api_dirs[1]) not in error
    assert "groups: image" in (api_dirs[1] / "tasks" / task_id / "pipeline.summary").read_text()
    mask = cv2.imdecode(np.frombuffer(api.client.get(f"/masks/{task_id}").content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == lattice.shape and set(np.unique(mask)) <= {0, 255}
    assert api.client.get(f"/ams/{task_id}").status_code == 409


def test_every_client_error_has_its_status_code_and_a_json_reason(api, api_dirs, lattice_png):
    client = api.client
    well_formed_unknown = uuid.uuid4().hex

    def refused(response, code: int, words: str) -> None:
        assert response.status_code == code, (response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json")
        assert words.lower() in response.json()["detail"].lower()

    # 415: wrong or missing Content-Type.
    refused(client.post("/tasks", content=lattice_png, headers={"Content-Type": "image/jpeg"}), 415, "image/png")
    refused(client.post("/tasks", content=lattice_png, headers={"Content-Type": "multipart/form-data"}), 415,
            "send the image file itself as the body, e.g. curl --data-binary @image.png")
    # curl -F with the image's type: a form body under an image Content-Type.
    form = (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n" + lattice_png
            + b"\r\n--xyz--\r\n")
    refused(client.post("/tasks", content=form, headers={"Content-Type": "image/png"}), 400,
            "the request body is a multipart form, not an image; send the image file itself as the body")
    refused(client.post("/tasks", content=lattice_png, headers={"Content-Type": ""}), 415, "none")
    # 413: too large, by Content-Length and while streaming a body that declares none.
    big = b"\x89PNG\r\n\x1a\n" + bytes(MAX_BYTES)
    refused(client.post("/tasks", content=big, headers={"Content-Type": "image/png"}), 413, str(MAX_BYTES))
    chunks = (big[i:i + 16384] for i in range(0, len(big), 16384))
    refused(client.post("/tasks", content=chunks, headers={"Content-Type": "image/png"}), 413, "more than")
    # 400: bodies that are not the image they claim to be, and bad parameters.
    refused(client.post("/tasks", content=b"not an image", headers={"Content-Type": "image/png"}), 400, "signature")
    refused(client.post("/tasks", content=lattice_png, headers={"Content-Type": "image/tiff"}), 400, "PNG image")
    refused(client.post("/tasks", content=b"", headers={"Content-Type": "image/png"}), 400, "empty")
    refused(client.post("/tasks", content=lattice_png[:200], headers={"Content-Type": "image/png"}), 400,
            "uploaded image")
    refused(client.post("/tasks", content=png_bytes(np.zeros((20, 40), np.uint8)),
                        headers={"Content-Type": "image/png"}), 400, "is 20 x 40 px (height x width); the model needs")
    for params, words in (({"rows": 5}, "together"), ({"rows": "five", "cols": 5}, "rows"),
                          ({"rows": 0, "cols": 5}, "rows"), ({"rows": 1000, "cols": 1000}, "65535"),
                          ({"rows": 1, "cols": 3}, "registration fits the grid to at least 4 marks")):
        refused(client.post("/tasks", content=lattice_png, params=params, headers={"Content-Type": "image/png"}),
                400, words)
    # 400 for a malformed id, 404 for a well-formed unknown one, on every route that takes an id.
    for method, template in (("GET", "/tasks/{}"), ("DELETE", "/tasks/{}"), ("GET", "/masks/{}"),
                             ("GET", "/ams/{}"), ("GET", "/ams/{}.csv")):
        for bad in ("abc", "g" * 32, well_formed_unknown.upper(), well_formed_unknown + "0", "%00", "a%2Fb"):
            refused(client.request(method, template.format(bad)), 400, "malformed")
        refused(client.request(method, template.format(well_formed_unknown)), 404, "does not exist")
    # Nothing refused left a task or an upload behind.
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert not list((api_dirs[1] / "uploads").iterdir())


def test_a_second_server_on_the_same_data_folder_or_port_is_refused_and_touches_nothing(api, api_dirs, tiny_model):
    # The module's server holds its data folder: a second one there must not start at all (it would
    # clean up the first's uploads and run its RUNNING tasks again), whatever port it is given.
    base, data = api_dirs
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    env = server_environment(base)
    args = [sys.executable, "-m", *api_args(data, tiny_model), "--host", "127.0.0.1"]
    second = subprocess.run([*args, "--port", str(free_port())], env=env, cwd=base, capture_output=True, text=True,
                            timeout=120, check=False)
    assert second.returncode == 1, second.stderr[-2000:]
    assert f"another am-segm server is using the data folder {data}" in second.stderr
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    # Another folder on the first server's port: a clear error and exit 1, not uvicorn's status 3.
    port = api.url.rsplit(":", 1)[1]
    taken = subprocess.run([sys.executable, "-m", *api_args(base / "other", tiny_model), "--host", "127.0.0.1",
                            "--port", port], env=env, cwd=base, capture_output=True, text=True, timeout=120,
                           check=False)
    assert taken.returncode == 1, taken.stderr[-2000:]
    assert f"could not start on 127.0.0.1:{port}" in taken.stderr and "choose another --port" in taken.stderr
    assert not (base / "other").exists()  # the port is taken before the data folder is made or cleaned
    # A model file that is no checkpoint stops the server: started, it would fail every task it accepted.
    not_a_model = base / "image.pt"
    not_a_model.write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    unusable = subprocess.run([sys.executable, "-m", *api_args(base / "other", not_a_model), "--host", "127.0.0.1",
                               "--port", str(free_port())], env=env, cwd=base, capture_output=True, text=True,
                              timeout=120, check=False)
    assert unusable.returncode == 1, unusable.stderr[-2000:]
    assert f"model {not_a_model} cannot be used" in unusable.stderr and "not a torch checkpoint" in unusable.stderr
    assert not (base / "other").exists()
    # The running server said where it listens (uvicorn does not, given a bound socket).
    assert f"serving on {api.url}" in api.log_text()


def pipelines_of(task_dir: Path) -> list[psutil.Process]:
    """The processes whose command line names ``task_dir``: the task's pipeline and its workers."""
    alive = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(task_dir) in (proc.info["cmdline"] or []):
                alive.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return alive


def test_restart_keeps_finished_tasks_and_resumes_one_cut_off_mid_run(tmp_path, tiny_model, lattice):
    # A server and data folder of its own: this test kills its server, which the module's tests share.
    data = tmp_path / "data"
    with running(api_args(data, tiny_model), tmp=tmp_path, name="api-killed") as api:
        done = submit(api, png_bytes(lattice))
        assert wait_for(api, done)[-1]["status"] == "FINISHED", api.log_text()[-4000:]
        masks = {done: api.client.get(f"/masks/{done}").content}
        cut_off = submit(api, png_bytes(np.flipud(lattice)))
        wait_for(api, cut_off, until=("RUNNING", "FINISHED", "FAILED"))
        # The server dies without any chance to clean up; its pipeline process is told to stop by the kernel.
        api.stop(signal.SIGKILL)
        record = json.loads((data / "tasks" / cut_off / "task.json").read_text())
        # The pipeline needs seconds to start alone, so the task was cut off mid-run.
        assert record["status"] == "RUNNING"
        # Its pipeline process does not outlive the server (the kernel sends it SIGTERM), so no orphan
        # keeps writing the task folder.
        wait_until(lambda: not pipelines_of(data / "tasks" / cut_off), timeout=60, poll_s=0.2,
                   what="the cut-off task's pipeline to end with the server")

    with running(api_args(data, tiny_model, concurrency=1), tmp=tmp_path, name="api-restarted") as again:
        for task_id, mask in masks.items():
            assert again.client.get(f"/tasks/{task_id}").json()["status"] == "FINISHED"
            assert again.client.get(f"/masks/{task_id}").content == mask
        final = wait_for(again, cut_off)[-1]
        assert final["status"] == "FINISHED", (final, again.log_text()[-4000:])
        assert f"task {cut_off} was RUNNING when the server last stopped; queued again" in again.log_text()
        mask = cv2.imdecode(np.frombuffer(again.client.get(f"/masks/{cut_off}").content, np.uint8),
                            cv2.IMREAD_UNCHANGED)
        assert mask.shape == lattice.shape


def test_each_task_runs_the_pipeline_with_the_servers_tta(tmp_path):
    from am.api.runner import PipelineCommand
    from am.pipeline.__main__ import build_parser
    from am.settings import Settings

    for mode in ("off", "rot180", "d4"):
        argv = PipelineCommand(Settings(tta=mode)).argv(tmp_path / "task", rows=None, cols=None)
        parsed = build_parser().parse_args(argv[3:])
        assert parsed.tta == mode and parsed.no_register



@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_server_stopped_by_its_supervisor_exits_0_without_an_error(tmp_path, tiny_model, sig):
    """SIGTERM is how systemd, ECS or Kubernetes stop a service: exit 130 and an ERROR read as a crash."""
    with running(api_args(tmp_path / "data", tiny_model), tmp=tmp_path, name="stopped") as server:
        assert server.stop(sig) == 0, server.log_text()[-4000:]
        assert " ERROR " not in server.log_text()
        # Whether uvicorn or the command line took the signal, the server says it stopped.
        assert server.log_text().count("am.api: stopped; cleaned up") == 1
