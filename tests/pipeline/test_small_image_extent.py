"""An image smaller than a tile: its messages carry the tiles' image extent, and its masks keep cut marks.

Such an image is reflect-padded up to the tile. A tile message names the rows and columns of its
tiles that are image (``valid``), so that the worker makes the mask of that part alone: in the
padding, a mark cut by the image edge would meet its mirror image away from the tile's edge and be
dropped as a speck. End to end here: the real orchestrator, job and Worker class (on threads, over
moto), with a model that marks exactly the bright disks of the image.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from faults.harness import ThreadLauncher
from moto import mock_aws

import am.job
import am.orchestrator
from am.backends import Backend
from am.dataset import DatasetLayout
from am.errors import MessageError
from am.imageio import read_image
from am.messages import TileMessage, tiles_key
from am.model.checkpoint import ModelMeta
from am.model.predict import Predictor
from am.orchestrator import run_pipeline
from am.settings import Settings
from am.transport.clients import ClientFactory
from tests.edge_scene import scene
from tests.pipeline.mocked_aws import deploy

REPLY = "http://127.0.0.1:4566/123456789012/am-segm-results-job-1"
# Post-processing as shipped checkpoints ask for it (specks under 40 px or 0.3 of the median mark
# are dropped unless they touch the edge).
META = ModelMeta(encoder="resnet18", threshold=0.5, seed_threshold=0.9, min_mark_px=40, min_mark_fraction=0.3,
                 trained=True)


def make(**changes) -> TileMessage:
    fields = dict(job="job-1", group="g1", tiles=(0, 1), input=tiles_key("job-1", "g1", (0, 1)),
                  output=tiles_key("job-1", "g1", (0, 1)), model="s3://models/m.pt", reply=REPLY)
    fields.update(changes)
    return TileMessage(**fields)


# -- the message field ------------------------------------------------------------------------------


def test_a_message_with_an_image_extent_round_trips():
    message = make(valid=[300, 512])
    assert message.valid == (300, 512)
    data = json.loads(message.to_json())
    assert data["valid"] == [300, 512] and data["v"] == 2
    assert TileMessage.from_json(message.to_json()) == message


def test_a_message_of_whole_tiles_has_no_extent_and_reads_as_before():
    body = make().to_json()
    assert "valid" not in json.loads(body)
    assert TileMessage.from_json(body).valid is None


@pytest.mark.parametrize("valid", [[300], [300, 512, 1], [0, 512], [300, -1], [300.0, 512], [True, 512], "300x512",
                                   {"rows": 300}])
def test_a_bad_extent_is_refused_naming_the_field_and_the_value(valid):
    body = json.dumps({**json.loads(make().to_json()), "valid": valid})
    with pytest.raises(MessageError, match=r"field 'valid' must be \[rows, columns\].*two integers >= 1, got"):
        TileMessage.from_json(body)
    with pytest.raises(MessageError, match="field 'valid' must be"):
        make(valid=valid)


def test_a_null_extent_is_refused():
    body = json.dumps({**json.loads(make().to_json()), "valid": None})
    with pytest.raises(MessageError, match="field 'valid' is null; leave it out"):
        TileMessage.from_json(body)


# -- end to end -------------------------------------------------------------------------------------


class Bright(torch.nn.Module):
    """A perfect segmenter of white disks on dark tissue: probability about 1 on bright pixels, 0 on dark."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * 10.0


class Deployment:
    """What ``open_backend`` yields here: moto's buckets and queues, and workers on threads that answer with
    ``predictor``; every message the workers were sent is recorded."""

    def __init__(self, settings: Settings, predictor: Predictor) -> None:
        self.predictor = predictor
        self.clients = ClientFactory(region=settings.region)
        self.queue_url, self.dlq_url = deploy(self.clients, settings, threads=4)

    @contextmanager
    def open_backend(self, settings: Settings, *, model: str, log_dir: Path,
                     base_environment: Mapping[str, str] | None = None) -> Iterator[Backend]:
        launcher = ThreadLauncher(self.clients, self.predictor, input_bucket=settings.input_bucket,
                                  output_bucket=settings.output_bucket, queue_url=self.queue_url)
        try:
            yield Backend("local", self.clients, launcher, self.queue_url, self.dlq_url, settings.input_bucket,
                          settings.output_bucket, model)
        finally:
            launcher.stop()


@pytest.fixture
def deployment(monkeypatch: pytest.MonkeyPatch, fake_aws_credentials: None) -> Iterator[Deployment]:
    settings = Settings(workers=1, transfer_threads=2)
    with mock_aws():
        deployment = Deployment(settings, Predictor(Bright(), META, device="cpu", batch_size=4))
        monkeypatch.setattr(am.orchestrator, "open_backend", deployment.open_backend)
        yield deployment


def _segment(tmp_path: Path, image: np.ndarray, tiny_model: Path, messages: list[TileMessage],
             monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """The stitched mask the pipeline makes of ``image``; ``messages`` gets the messages it sent."""
    folder = tmp_path / "ds" / "source" / "g"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "image.png"), image)
    real = am.job._message

    def recording(*args, **kwargs) -> str:
        body = real(*args, **kwargs)
        messages.append(TileMessage.from_json(body))
        return body

    monkeypatch.setattr(am.job, "_message", recording)
    settings = Settings(model=str(tiny_model), workers=1, transfer_threads=2)
    summary = run_pipeline(tmp_path / "ds", settings=settings, register=False, cache_dir=tmp_path / "cache",
                           show_progress=False)
    assert summary.job is not None and summary.job.completed == summary.tiles
    return read_image(DatasetLayout(tmp_path / "ds").stitched_mask("g"))


def test_a_small_image_keeps_the_mark_its_edge_cuts(deployment, tiny_model, tmp_path, monkeypatch):
    image = scene(300, 600)
    messages: list[TileMessage] = []
    mask = _segment(tmp_path, image, tiny_model, messages, monkeypatch)

    assert mask.shape == image.shape
    visible = image[297:300, 285:316] == 250
    assert visible.sum() > 0
    assert np.array_equal(mask[297:300, 285:316] > 0, visible), "the mark cut by the image edge was dropped"
    # The whole disks are marked as they are.
    assert np.array_equal(mask[10:51, 10:51] > 0, image[10:51, 10:51] == 250)
    assert messages and all(m.valid == (300, 512) for m in messages)


def test_a_large_image_sends_no_extent(deployment, tiny_model, tmp_path, monkeypatch):
    image = scene(700, 600)
    messages: list[TileMessage] = []
    mask = _segment(tmp_path, image, tiny_model, messages, monkeypatch)

    assert messages and all(m.valid is None for m in messages)
    assert np.array_equal(mask[697:700, 285:316] > 0, image[697:700, 285:316] == 250)
