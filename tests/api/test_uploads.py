"""What both HTTP services do with damaged and oversized images: 4xx JSON, nothing decoded that need not be.

The real task API (store, runner, a fake pipeline script) and the real SageMaker app with the
tiny model, in-process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import am.api.uploads as uploads_module
from am.api.app import create_app as create_api
from am.api.runner import TaskRunner
from am.api.tasks import TaskStore
from am.api.uploads import DECODED_BYTES_PER_BODY_BYTE
from am.serve.app import create_app as create_serve
from am.settings import Settings
from tests.images.tiffs import tiff_bytes, with_damaged_strip, with_tag_count

from .test_runner import FakePipeline

MAX_BYTES = 100_000


def damaged(compression: str) -> bytes:
    """A compressed TIFF whose first strip is damaged; its header is intact."""
    image = np.random.default_rng(0).integers(0, 65535, (60, 80), dtype=np.uint16)
    return with_damaged_strip(tiff_bytes(image, compression=compression))


def bomb() -> bytes:
    """A few kilobytes of zlib that declare 8 MB of RGBA 16-bit pixels: above 8 x MAX_BYTES."""
    return tiff_bytes(np.zeros((1000, 1000, 4), np.uint16), compression="zlib", photometric="rgb",
                      extrasamples=["unassalpha"], rowsperstrip=100)


@pytest.fixture
def api(tmp_path) -> Iterator[tuple[TestClient, TaskStore]]:
    store = TaskStore(tmp_path / "data")
    runner = TaskRunner(store, FakePipeline(Settings()), environ=os.environ, stop_grace_s=10)
    with TestClient(create_api(store, runner, max_bytes=MAX_BYTES), raise_server_exceptions=False) as client:
        yield client, store


@pytest.fixture(scope="module")
def serve(tiny_model) -> Iterator[TestClient]:
    from am.model.predict import Predictor
    from am.serve.segment import ImageSegmenter

    segmenter = ImageSegmenter(Predictor.from_checkpoint(tiny_model, device="cpu", threads=1, precision="fp32"),
                               tile_size=128, tile_overlap=32)
    with TestClient(create_serve(segmenter, max_bytes=MAX_BYTES), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def decoded(monkeypatch) -> list[Path]:
    """The uploads the servers decoded."""
    paths: list[Path] = []
    read = uploads_module.read_image

    def recording_read(path: Path) -> np.ndarray:
        paths.append(path)
        return read(path)

    monkeypatch.setattr(uploads_module, "read_image", recording_read)
    return paths


def refused(response, code: int, *words: str) -> str:
    assert response.status_code == code, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail
    return detail


@pytest.mark.parametrize("compression", ["zlib", "lzw", "packbits"])
def test_a_tiff_with_damaged_compressed_pixels_is_refused_with_400(api, serve, compression):
    client, store = api
    body = damaged(compression)
    for response in (client.post("/tasks", content=body, headers={"Content-Type": "image/tiff"}),
                     serve.post("/invocations", content=body, headers={"Content-Type": "image/tiff"})):
        detail = refused(response, 400, "the uploaded image", "pixel data cannot be decoded")
        assert str(store.uploads_dir) not in detail
    assert not list(store.tasks_dir.iterdir()) and not list(store.uploads_dir.iterdir())
    assert serve.get("/ping").status_code == 200


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_a_png_cut_short_or_damaged_is_refused_with_400_naming_what_is_wrong(api, serve, damage):
    import cv2

    client, store = api
    body = bytearray(cv2.imencode(".png", np.random.default_rng(1).integers(0, 255, (60, 80), dtype=np.uint8))[1])
    if damage == "cut":
        body = body[: len(body) - 100]
    else:
        body[len(body) // 2] ^= 0x10
    words = ("is truncated: its 'IDAT' chunk at byte 33 runs past the end" if damage == "cut"
             else "is damaged: its 'IDAT' chunk at byte 33 fails its CRC check")
    for response in (client.post("/tasks", content=bytes(body), headers={"Content-Type": "image/png"}),
                     serve.post("/invocations", content=bytes(body), headers={"Content-Type": "image/png"})):
        detail = refused(response, 400, "the uploaded image " + words)
        assert str(store.uploads_dir) not in detail
    assert not list(store.tasks_dir.iterdir()) and not list(store.uploads_dir.iterdir())


def test_a_tiff_with_a_malformed_tag_is_refused_with_400(api, serve):
    client, _ = api
    body = with_tag_count(tiff_bytes(np.zeros((30, 40), np.uint16)), tag=277, count=2)  # SamplesPerPixel
    refused(client.post("/tasks", content=body, headers={"Content-Type": "image/tiff"}), 400, "cannot be read as TIFF")
    refused(serve.post("/invocations", content=body, headers={"Content-Type": "image/tiff"}), 400,
            "cannot be read as TIFF")


def test_an_image_that_would_decode_to_too_many_bytes_is_refused_before_decoding(api, serve, decoded):
    client, store = api
    body = bomb()
    assert len(body) < MAX_BYTES / 4
    limit = str(DECODED_BYTES_PER_BODY_BYTE * MAX_BYTES)
    for response in (client.post("/tasks", content=body, headers={"Content-Type": "image/tiff"}),
                     serve.post("/invocations", content=body, headers={"Content-Type": "image/tiff"})):
        refused(response, 413, "1000 x 1000 pixels with 4 channel(s) of uint16", "8000000 bytes once decoded",
                limit, "--max-bytes")
    assert decoded == [], "refused from the header, before a pixel was decoded"
    assert not list(store.tasks_dir.iterdir()) and not list(store.uploads_dir.iterdir())


def test_an_image_within_the_limit_is_decoded_once_and_accepted(api, serve, decoded):
    client, _ = api
    image = np.random.default_rng(1).integers(0, 65535, (150, 190), dtype=np.uint16)
    body = tiff_bytes(image, compression="zlib")
    response = client.post("/tasks", content=body, headers={"Content-Type": "image/tiff"})
    assert response.status_code == 201, response.text
    response = serve.post("/invocations", content=body, headers={"Content-Type": "image/tiff"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert len(decoded) == 2


# What checking holds beside the pixels the header counts: a block of to_grey's temporaries (about 1 MiB),
# and a PNG's chunks read for their CRCs (1 MiB at a time).
WORKING_BYTES = 2 * 1024 * 1024


@pytest.mark.parametrize("suffix, channels", [(".png", 3), (".png", 4), (".tiff", 3)])
def test_a_colour_upload_is_checked_and_loaded_within_what_its_header_counts(tmp_path, suffix, channels):
    """The grey image is made over the colour pixels: no grey copy beside them, no full-size float32 temporary."""
    import shutil
    import tracemalloc

    from am.api.uploads import PNG, TIFF, check_image, load_grey
    from am.imageio import read_header, write_png, write_tiff
    from am.normalize import to_grey

    image = np.random.default_rng(2).integers(0, 256, (1000, 1000, channels), dtype=np.uint8)
    source = tmp_path / f"source{suffix}"
    write_png(source, image) if suffix == ".png" else write_tiff(source, image, compress=False)
    header = read_header(source)
    max_bytes = -(-header.decoded_bytes // DECODED_BYTES_PER_BODY_BYTE)
    for load in (check_image, load_grey):
        part = tmp_path / "upload.part"
        shutil.copy(source, part)
        tracemalloc.start()
        try:
            grey = load(part, kind=PNG if suffix == ".png" else TIFF, max_bytes=max_bytes)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak <= header.decoded_bytes + WORKING_BYTES, (load.__name__, peak, header.decoded_bytes)
        part.with_suffix(suffix).unlink()
    assert np.array_equal(grey, to_grey(image))


def test_an_image_with_nan_pixels_is_refused_by_both_servers_before_it_is_a_task(api, serve):
    client, store = api
    image = np.full((60, 80), 0.5, np.float32)
    image[3, 4], image[10, :5] = np.inf, np.nan
    body = tiff_bytes(image)
    for response in (client.post("/tasks", content=body, headers={"Content-Type": "image/tiff"}),
                     serve.post("/invocations", content=body, headers={"Content-Type": "image/tiff"})):
        refused(response, 400, "has 6 pixel(s) with NaN or infinite values")
    assert not list(store.tasks_dir.iterdir()) and not list(store.uploads_dir.iterdir())


def _hang_up_mid_upload(app, path: str, *, then: str = "http.disconnect") -> list[dict]:
    """Run one POST of ``path`` whose client sends part of a PNG and disconnects (or goes on); the
    messages sent back."""
    import anyio

    more = {"type": "http.request", "body": bytes(40), "more_body": False}
    incoming = [{"type": "http.request", "body": b"\x89PNG\r\n\x1a\n" + bytes(40), "more_body": True},
                {"type": "http.disconnect"} if then == "http.disconnect" else more]
    sent: list[dict] = []

    async def receive() -> dict:
        return incoming.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    anyio.run(app, _scope(path), receive, send)
    return sent


def _scope(path: str) -> dict:
    """The ASGI scope of a POST of a PNG to ``path``, as a server passes it to the app."""
    return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": [(b"content-type", b"image/png")], "http_version": "1.1", "scheme": "http",
            "server": ("testserver", 80), "client": ("client", 1), "root_path": ""}


def test_a_client_that_hangs_up_mid_upload_leaves_no_file_and_no_traceback_in_either_server(api, serve, caplog):
    import logging

    client, store = api
    for app, path in ((client.app, "/tasks"), (serve.app, "/invocations")):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            sent = _hang_up_mid_upload(app, path)
        assert sent[0]["status"] == 400 and b"disconnected before the whole image was sent" in sent[1]["body"], path
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        assert "an upload was cut off: the client disconnected" in caplog.text
    assert not list(store.uploads_dir.iterdir()) and not list(store.tasks_dir.iterdir())


def test_an_upload_still_coming_in_when_the_server_stops_gets_503_and_leaves_nothing(api, serve, caplog):
    import logging

    client, store = api
    for app, path in ((client.app, "/tasks"), (serve.app, "/invocations")):
        app.state.stopping = lambda: True  # what am.api.listen.serve sets: the server was told to stop
        try:
            caplog.clear()
            with caplog.at_level(logging.INFO):
                sent = _hang_up_mid_upload(app, path, then="more")
        finally:
            del app.state.stopping
        assert sent[0]["status"] == 503, (path, sent)
        assert b"the server is stopping; send the image again once it is back" in sent[1]["body"]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert not list(store.uploads_dir.iterdir()) and not list(store.tasks_dir.iterdir())


@pytest.mark.parametrize("name, image, extra, decoded_bytes", [
    # 360 kB of palette indices, far below the 800 kB limit: read as 16-bit RGB, 2.5 MB.
    ("palette", np.zeros((600, 600), np.uint8), {"photometric": "palette", "colormap": np.zeros((3, 256), np.uint16)},
     600 * 600 * (1 + 3 * 2)),
    # 320 kB of float16, read as float32 beside it.
    ("float16", np.zeros((400, 400), np.float16), {}, 400 * 400 * (2 + 4)),
])
def test_an_image_read_as_larger_pixels_than_it_stores_is_refused_by_what_reading_takes(api, serve, decoded, name,
                                                                                         image, extra, decoded_bytes):
    client, store = api
    body = tiff_bytes(image, compression="zlib", **extra)
    assert image.nbytes < DECODED_BYTES_PER_BODY_BYTE * MAX_BYTES < decoded_bytes
    for response in (client.post("/tasks", content=body, headers={"Content-Type": "image/tiff"}),
                     serve.post("/invocations", content=body, headers={"Content-Type": "image/tiff"})):
        refused(response, 413, f"{decoded_bytes} bytes once decoded", "read as ", "--max-bytes")
    assert decoded == [], "refused from the header, before a pixel was decoded"
    assert not list(store.tasks_dir.iterdir()) and not list(store.uploads_dir.iterdir())


class _CountingModel:
    """A stand-in for the model (:class:`am.model.Predictor`'s interface): marks everything, counts the tiles."""

    device, precision, batch_size = "cpu", "fp32", 4

    def __init__(self) -> None:
        self.tiles = 0

    def predict(self, tiles: np.ndarray, **_: object) -> np.ndarray:
        self.tiles += len(tiles)
        return np.full(tiles.shape, 255, np.uint8)


@pytest.mark.parametrize("image", [
    np.zeros((60, 80), np.uint8),
    np.full((60, 80), 4000, np.uint16),
    np.full((60, 80, 3), 17, np.uint8),
    np.full((60, 80), 0.25, np.float32),
    np.tile(np.array([[9, 10]], np.uint16), (60, 40)),  # one level apart: quantisation noise, no marks
])
def test_a_blank_image_is_refused_by_the_task_api_and_gets_an_empty_mask_from_serve(api, image):
    """The pipeline refuses a blank image: the task API says so at once (400), not as a task that fails
    with the command line's advice. A SageMaker record may be a tile of background: its mask is empty."""
    import cv2

    client, store = api
    body = tiff_bytes(image)
    detail = refused(client.post("/tasks", content=body, headers={"Content-Type": "image/tiff"}), 400,
                     "the uploaded image is blank (", "it holds no marks to segment")
    assert "group" not in detail, "no advice only the command line can follow"
    assert not list(store.tasks_dir.iterdir()) and not list(store.uploads_dir.iterdir())

    from am.serve.segment import ImageSegmenter

    model = _CountingModel()
    segmenter = ImageSegmenter(model, tile_size=128, tile_overlap=32)  # type: ignore[arg-type]
    with TestClient(create_serve(segmenter, max_bytes=MAX_BYTES)) as http:
        response = http.post("/invocations", content=body, headers={"Content-Type": "image/tiff"})
        assert response.status_code == 200, response.text
        mask = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask.shape == image.shape[:2] and not mask.any()
        assert model.tiles == 0, "made without the model"
        # Too thin is still too thin, blank or not.
        thin = tiff_bytes(np.zeros((12, 300), np.uint8))
        assert http.post("/invocations", content=thin, headers={"Content-Type": "image/tiff"}).status_code == 400
        # A record with anything in it is segmented.
        varied = image.copy()
        varied[::7, ::5] = varied.flat[0] + 9
        assert http.post("/invocations", content=tiff_bytes(varied),
                         headers={"Content-Type": "image/tiff"}).status_code == 200
        assert model.tiles > 0


def test_the_pipelines_advice_to_leave_a_group_out_does_not_reach_an_api_client():
    from am.api.runner import api_words
    from am.errors import InputError
    from am.normalize import check_not_blank
    from am.prepare import check_image_size

    for check in (lambda: check_not_blank(np.zeros((60, 80), np.uint8), "image x.png"),
                  lambda: check_image_size(20, 40, scale=1.0, name="image x.png")):
        with pytest.raises(InputError, match="leave the group out") as info:
            check()
        said = api_words(str(info.value))
        assert "group" not in said and said.startswith("image x.png is ")


def _no_room(monkeypatch) -> None:
    """Every upload's writes fail as on a full disk (the file is created, as it would be)."""
    import errno
    import io

    real_open = open

    class FullDisk(io.BufferedWriter):
        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def opening(path, mode="r", *args, **kwargs):
        return FullDisk(real_open(path, mode.replace("b", "") + "b", buffering=0)) if "x" in mode else \
            real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(uploads_module, "open", opening, raising=False)


def test_a_full_disk_while_an_upload_is_stored_is_a_json_507_logged_with_its_path_and_no_traceback(
        api, serve, lattice_png, monkeypatch, caplog):
    import logging

    client, store = api
    _no_room(monkeypatch)
    for http, path in ((client, "/tasks"), (serve, "/invocations")):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            response = http.post(path, content=lattice_png, headers={"Content-Type": "image/png"})
        detail = refused(response, 507, "the server could not store the upload: No space left on device; send it "
                                        "again later")
        assert "/" not in detail, "the client is not told the server's folders"
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is None, caplog.text
        logged = errors[0].getMessage()
        where = str(store.uploads_dir) if path == "/tasks" else "/record.part"
        assert f"POST {path} failed (507): [Errno 28] No space left on device: " in logged and where in logged, logged
    assert not list(store.tasks_dir.iterdir()) and not list(store.uploads_dir.iterdir())


def test_a_task_that_cannot_be_recorded_for_want_of_room_is_a_507_and_leaves_nothing(api, lattice_png, monkeypatch,
                                                                                   caplog):
    import errno

    import am.api.tasks as tasks_module

    def no_room(path: Path, data: bytes) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(tasks_module, "write_atomic", no_room)
    client, store = api
    refused(client.post("/tasks", content=lattice_png, headers={"Content-Type": "image/png"}), 507,
            "the server could not store the upload: Disk quota exceeded")
    assert str(store.tasks_dir) in caplog.text, "the log names where"
    assert not list(store.tasks_dir.iterdir()) and not list(store.uploads_dir.iterdir())


def test_other_server_faults_are_a_json_500_logged_with_their_traceback(api, serve, lattice_png, monkeypatch, caplog):
    import errno
    import logging

    import am.api.app as api_module
    import am.serve.app as serve_module

    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/srv/secret/upload.png")

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    client, store = api
    for fault, words in ((unreadable, "the server could not store the upload: Permission denied"),
                         (bug, "the server failed unexpectedly")):
        monkeypatch.setattr(api_module, "check_image", fault)
        monkeypatch.setattr(serve_module, "load_grey", fault)
        for http, path in ((client, "/tasks"), (serve, "/invocations")):
            caplog.clear()
            detail = refused(http.post(path, content=lattice_png, headers={"Content-Type": "image/png"}), 500, words)
            assert "/srv" not in detail
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1 and errors[0].exc_info, caplog.text
            assert f"POST {path} failed" in errors[0].getMessage()
    assert not list(store.tasks_dir.iterdir()) and not list(store.uploads_dir.iterdir())


def _cancelled_midway(app, path: str, bodies: list[list[bytes]], *, when: Callable[[], bool],
                      release: Callable[[], None] = lambda: None, stall: bool = False) -> list[list[dict]]:
    """POST each body (its chunks) to ``path`` at once, and once every chunk was taken and ``when()`` holds,
    cancel every request twice as a stopping uvicorn does (at the end of its graceful shutdown, then as
    its loop closes); then ``release()`` the work held up. ``stall``: the clients never say that their
    bodies are complete. The messages each request sent back."""
    import asyncio

    async def main() -> list[list[dict]]:
        sent: list[list[dict]] = [[] for _ in bodies]
        requests, incomings = [], []
        for chunks, answer in zip(bodies, sent, strict=True):
            incoming = [{"type": "http.request", "body": chunk, "more_body": stall or i < len(chunks) - 1}
                        for i, chunk in enumerate(chunks)]
            incomings.append(incoming)

            async def receive(incoming=incoming) -> dict:
                if incoming:
                    return incoming.pop(0)
                await asyncio.Event().wait()  # the client sends nothing more
                raise AssertionError("unreachable")

            async def send(message: dict, answer=answer) -> None:
                answer.append(message)

            requests.append(asyncio.ensure_future(app(_scope(path), receive, send)))
        while any(incomings) or not when():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the others reach where they wait
        for _ in range(2):
            for request in requests:
                request.cancel()
            await asyncio.sleep(0.05)
        release()
        done, pending = await asyncio.wait(requests, timeout=60)
        assert not pending
        for request in done:
            request.result()
        return sent

    return asyncio.run(main())


def _answer(sent: list[dict]) -> tuple[int, bytes]:
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


def test_a_record_being_segmented_when_the_server_stops_is_finished_and_the_next_one_refused_with_503(
        lattice_png, caplog):
    """uvicorn cancels what still runs 10 s after SIGTERM: the record the model is on is answered with its
    mask (the thread could not be stopped anyway), the one waiting for the model with a 503, no traceback."""
    import logging
    import threading

    import cv2

    started, go = threading.Event(), threading.Event()

    class HeldUp:
        class predictor:  # what /ping reads
            device, precision = "cpu", "fp32"

        def segment(self, image: np.ndarray, *, name: str) -> np.ndarray:
            started.set()
            assert go.wait(30)
            return np.full(image.shape[:2], 255, np.uint8)

    app = create_serve(HeldUp(), max_bytes=MAX_BYTES)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO):
        first, second = _cancelled_midway(app, "/invocations", [[lattice_png], [lattice_png]], when=started.is_set,
                                          release=go.set)
    status, body = _answer(first)
    assert status == 200, body
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED).shape == (150, 190)
    assert _answer(second) == (503, b'{"detail":"the server is stopping; send the image again once it is back"}')
    assert "finishing the request in progress before it stops" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


def test_an_upload_being_checked_when_the_task_api_stops_becomes_its_task(api, lattice_png, monkeypatch, caplog):
    import logging
    import threading

    import am.api.app as api_module

    client, store = api
    started, go = threading.Event(), threading.Event()
    check = api_module.check_image

    def held_up_check(*args, **kwargs):
        started.set()
        assert go.wait(30)
        return check(*args, **kwargs)

    monkeypatch.setattr(api_module, "check_image", held_up_check)
    with caplog.at_level(logging.INFO):
        [sent] = _cancelled_midway(client.app, "/tasks", [[lattice_png]], when=started.is_set, release=go.set)
    status, body = _answer(sent)
    assert status == 201, body
    assert [task.name for task in store.tasks_dir.iterdir()] == [json.loads(body)["id"]]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


def test_an_upload_that_stalls_while_the_server_stops_gets_503_and_leaves_nothing(api, serve, lattice_png, caplog):
    import logging

    client, store = api
    for app, path in ((client.app, "/tasks"), (serve.app, "/invocations")):
        stopping = {"now": False}
        app.state.stopping = lambda stopping=stopping: stopping["now"]

        def stop(stopping=stopping) -> bool:  # once a part is in, the server is told to stop
            stopping["now"] = True
            return True

        try:
            caplog.clear()
            with caplog.at_level(logging.INFO):
                [sent] = _cancelled_midway(app, path, [[lattice_png[:100]]], when=stop, stall=True)
        finally:
            del app.state.stopping
        assert _answer(sent) == (503, b'{"detail":"the server is stopping; send the image again once it is back"}')
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text
    assert not list(store.uploads_dir.iterdir()) and not list(store.tasks_dir.iterdir())
