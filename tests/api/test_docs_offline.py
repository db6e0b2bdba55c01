"""/docs and /redoc work with no internet: every script, stylesheet and icon they load is served by the server.

FastAPI's own pages load Swagger UI and ReDoc from cdn.jsdelivr.net, so on an offline lab machine
they stayed blank. Both HTTP services, in-process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from am.api.app import create_app as create_api
from am.api.runner import TaskRunner
from am.api.tasks import TaskStore
from am.serve.app import create_app as create_serve
from am.settings import Settings

from .test_runner import FakePipeline

# What each kind of asset must be served as, by its file name's ending.
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class _Assets(HTMLParser):
    """The URLs a page loads: <script src>, <link href>."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]


def page_assets(client: TestClient, page: str) -> list[str]:
    answer = client.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert "://" not in answer.text, f"{page} names another server"
    parser = _Assets()
    parser.feed(answer.text)
    return parser.urls


def check_served_here(client: TestClient, page: str) -> None:
    urls = page_assets(client, page)
    assert any(url.endswith(".js") for url in urls), f"{page} loads no script: {urls}"
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
        answer = client.get(url)
        assert answer.status_code == 200, url
        assert len(answer.content) > 1000, url
        expected = MEDIA_TYPES[os.path.splitext(url)[1]]
        assert answer.headers["content-type"].split(";")[0] == expected, url


@pytest.fixture
def api(tmp_path) -> Iterator[TestClient]:
    store = TaskStore(tmp_path / "data")
    runner = TaskRunner(store, FakePipeline(Settings()), environ=os.environ, stop_grace_s=10)
    with TestClient(create_api(store, runner)) as client:
        yield client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_task_api_pages_load_their_scripts_from_the_server(api: TestClient, page: str) -> None:
    check_served_here(api, page)


def test_task_api_docs_page_asks_for_the_served_openapi_document(api: TestClient) -> None:
    assert "'/openapi.json'" in api.get("/docs").text
    assert api.get("/openapi.json").json()["info"]["title"] == "am-segm task API"


def test_docs_assets_stay_out_of_the_openapi_document(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith(("/docs", "/redoc"))]


def test_sagemaker_docs_load_their_scripts_from_the_server(tiny_model) -> None:
    from am.model.predict import Predictor
    from am.serve.segment import ImageSegmenter

    segmenter = ImageSegmenter(Predictor.from_checkpoint(tiny_model, device="cpu", threads=1, precision="fp32"),
                               tile_size=128, tile_overlap=32)
    with TestClient(create_serve(segmenter)) as client:
        check_served_here(client, "/docs")
