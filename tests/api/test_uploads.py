"""What both HTTP services do with damaged and oversized images: 4xx JSON, nothing decoded that need not be.

The real task API (store, runner, a fake pipeline script) and the real SageMaker app with the
tiny model, in-process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"image/png")], "http_version": "1.1", "scheme": "http",
             "server": ("testserver", 80), "client": ("client", 1), "root_path": ""}
    anyio.run(app, scope, receive, send)
    return sent


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
