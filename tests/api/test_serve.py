"""The SageMaker contract over real HTTP: ``python -m am.serve serve`` with a tiny model in a model folder."""

from __future__ import annotations

import io
import shutil

import cv2
import numpy as np
import pytest
import tifffile

from am.errors import CheckpointError
from am.model.predict import Predictor
from am.normalize import normalize
from am.serve.segment import ImageSegmenter, find_model

from .servers import TILE, png_bytes, running

MAX_BYTES = 150_000


@pytest.fixture(scope="module")
def serve(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("serve")
    model_dir = base / "model"
    model_dir.mkdir()
    shutil.copy(tiny_model, model_dir / "model.pt")
    args = ["am.serve", "serve", "--model-dir", str(model_dir), "--device", "cpu", "--max-bytes", str(MAX_BYTES),
            *TILE]
    with running(args, tmp=base, name="serve") as server:
        yield server


@pytest.fixture(scope="module")
def serve_d4(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("serve-d4")
    (base / "model").mkdir()
    shutil.copy(tiny_model, base / "model" / "model.pt")
    args = ["am.serve", "serve", "--model-dir", str(base / "model"), "--device", "cpu", "--tta", "d4", *TILE]
    with running(args, tmp=base, name="serve-d4") as server:
        yield server


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def test_ping_answers_200_once_the_model_is_loaded(serve):
    response = serve.client.get("/ping")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    params = serve.client.get("/execution-parameters").json()
    assert params["BatchStrategy"] == "SINGLE_RECORD" and params["MaxConcurrentTransforms"] == 1
    # SageMaker's limit is in whole MB: a server that refuses less says so, and where it listens.
    assert params["MaxPayloadInMB"] == 1
    log = serve.log_text()
    assert f"--max-bytes {MAX_BYTES} is below 1 MiB" in log and f"serving on {serve.url}" in log
    # Health checkers that use HEAD get the same answer, without the body.
    head = serve.client.head("/ping")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(response.content)
    assert serve.client.head("/invocations").status_code == 405


def test_invocations_returns_the_mask_the_model_gives_for_a_tile(serve, tiny_model):
    rng = np.random.default_rng(5)
    tile = rng.integers(0, 256, size=(128, 128), dtype=np.uint8)
    response = serve.client.post("/invocations", content=png_bytes(tile), headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    expected = Predictor.from_checkpoint(tiny_model, device="cpu").predict(normalize(tile)[None])[0]
    np.testing.assert_array_equal(decode(response.content), expected)


def test_serve_with_tta_returns_the_mask_of_the_averaged_views(serve_d4, tiny_model):
    tile = np.random.default_rng(6).integers(0, 256, size=(128, 128), dtype=np.uint8)
    response = serve_d4.client.post("/invocations", content=png_bytes(tile), headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu")
    expected = predictor.predict(normalize(tile)[None], tta="d4")[0]
    np.testing.assert_array_equal(decode(response.content), expected)
    assert not np.array_equal(expected, predictor.predict(normalize(tile)[None])[0])


@pytest.mark.parametrize("content_type", ["application/x-image", "image/tiff"])
def test_invocations_segments_a_whole_16_bit_tiff_like_the_pipeline(serve, tiny_model, lattice, content_type):
    image = lattice.astype(np.uint16) * 250
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    response = serve.client.post("/invocations", content=buffer.getvalue(), headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    mask = decode(response.content)
    assert mask.shape == image.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    segmenter = ImageSegmenter(Predictor.from_checkpoint(tiny_model, device="cpu"), tile_size=128, tile_overlap=32)
    np.testing.assert_array_equal(mask, segmenter.segment(image))


def test_invocations_refuses_what_it_cannot_segment_with_4xx(serve, lattice):
    body = png_bytes(lattice)
    cases = [
        ({"Content-Type": "text/csv"}, body, 415),
        ({}, body, 415),
        ({"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n" + bytes(64), 400),
        ({"Content-Type": "image/png"}, b"hello", 400),
        ({"Content-Type": "image/png"}, b"", 400),
        ({"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n" + bytes(MAX_BYTES), 413),
    ]
    for headers, content, code in cases:
        response = serve.client.post("/invocations", content=content, headers=headers)
        assert response.status_code == code, (headers, code, response.text)
        assert response.json()["detail"]
    assert serve.client.get("/ping").status_code == 200


def test_find_model_takes_model_pt_or_the_only_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        find_model(tmp_path / "missing")
    (tmp_path / "sub").mkdir()
    only = tmp_path / "sub" / "best.pt"
    only.write_bytes(b"x")
    assert find_model(tmp_path) == only
    (tmp_path / "other.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="2 .pt files"):
        find_model(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"x")
    assert find_model(tmp_path) == tmp_path / "model.pt"
    # The checkpoint itself given for its folder: named as a file, with the folder to give.
    with pytest.raises(CheckpointError, match="is a file, not a folder") as refused:
        find_model(tmp_path / "model.pt")
    assert str(refused.value).endswith(f"give the folder that holds it ({tmp_path})")


def test_serve_exits_1_with_a_clear_message_when_the_model_folder_is_empty(tmp_path):
    import subprocess
    import sys

    from .servers import server_environment

    result = subprocess.run([sys.executable, "-m", "am.serve", "serve", "--model-dir", str(tmp_path), "--port", "0"],
                            env=server_environment(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "name the checkpoint model.pt" in result.stderr


def test_serve_takes_precision_from_the_option_then_am_precision_then_auto():
    from am.errors import ConfigError
    from am.serve.__main__ import build_parser, resolve_precision_option

    assert build_parser().parse_args(["serve", "--precision", "fp32"]).precision == "fp32"
    assert build_parser().parse_args(["serve"]).precision is None
    assert resolve_precision_option("fp32", {"AM_PRECISION": "bf16"}) == "fp32"
    assert resolve_precision_option(None, {"AM_PRECISION": " BF16 "}) == "bf16"
    assert resolve_precision_option(None, {}) == "auto"
    with pytest.raises(ConfigError, match="AM_PRECISION = 'fp8' must be one of auto, fp32, fp16, bf16"):
        resolve_precision_option(None, {"AM_PRECISION": "fp8"})


@pytest.mark.parametrize("option, environ, expected", [
    (["--precision", "fp32"], {"AM_PRECISION": "bf16"}, "fp32"),  # the option wins
    ([], {"AM_PRECISION": "bf16"}, "bf16"),  # as workers read it (bf16 runs on any CPU, slowly without AMX)
])
def test_the_model_runs_in_the_precision_asked_for(tmp_path, tiny_model, option, environ, expected):
    (tmp_path / "model").mkdir()
    shutil.copy(tiny_model, tmp_path / "model" / "model.pt")
    args = ["am.serve", "serve", "--model-dir", str(tmp_path / "model"), "--device", "cpu", *option, *TILE]
    with running(args, tmp=tmp_path, name="serve-precision", env=environ) as server:
        assert server.client.get("/ping").json() == {"status": "ok", "device": "cpu", "precision": expected}
        tile = np.random.default_rng(7).integers(0, 256, size=(128, 128), dtype=np.uint8)
        response = server.client.post("/invocations", content=png_bytes(tile), headers={"Content-Type": "image/png"})
        assert response.status_code == 200
        assert f"loaded on cpu ({expected})" in server.log_text()


def test_serve_exits_1_naming_a_bad_am_precision(tmp_path):
    import subprocess
    import sys

    from .servers import server_environment

    result = subprocess.run([sys.executable, "-m", "am.serve", "serve", "--model-dir", str(tmp_path), "--port", "0"],
                            env={**server_environment(tmp_path), "AM_PRECISION": "fp8"}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert "AM_PRECISION = 'fp8' must be one of" in result.stderr


@pytest.mark.parametrize(("value", "said"), [("abc", "SAGEMAKER_BIND_TO_PORT = 'abc' is not a port number"),
                                             ("70000", "SAGEMAKER_BIND_TO_PORT = 70000 must be between 0 and 65535")])
def test_a_bad_sagemaker_port_is_a_usage_error_naming_the_variable(monkeypatch, capsys, value, said):
    from am.serve.__main__ import main

    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", value)
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--model-dir", "nowhere"])
    assert exited.value.code == 2 and said in capsys.readouterr().err


def test_an_empty_sagemaker_port_counts_as_unset(monkeypatch):
    import argparse

    from am.serve.__main__ import SAGEMAKER_PORT, _port_from_environment

    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", " ")
    assert _port_from_environment(argparse.ArgumentParser()) == SAGEMAKER_PORT
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9000")
    assert _port_from_environment(argparse.ArgumentParser()) == 9000


def test_a_record_too_thin_for_the_model_is_refused_with_400_as_the_pipeline_refuses_it(serve):
    thin = np.random.default_rng(0).integers(0, 255, (12, 300), dtype=np.uint8)
    response = serve.client.post("/invocations", content=png_bytes(thin), headers={"Content-Type": "image/png"})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith("the record is 12 x 300 px (height x width); the model needs at least 32 px")
    assert detail.endswith(": send a larger crop of the acquisition")  # no --scale or group to speak of


def test_scale_auto_segments_marks_far_larger_than_the_models_at_the_factor_their_pitch_asks_for(tmp_path, caplog):
    """The shipped model on marks 144 px apart: at scale 1 it breaks them into pieces; ``auto``
    shrinks the record 0.31 times, as the pipeline would, and gives the mask back at full size."""
    from am.model.checkpoint import default_model_path
    from am.synth.dataset import write_dataset

    write_dataset(tmp_path / "ds", rows=8, cols=8, seed=5, pitch=36.0)
    image = cv2.resize(cv2.imread(str(tmp_path / "ds" / "source" / "group01" / "image.tif"), cv2.IMREAD_GRAYSCALE),
                       None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    truth = cv2.resize(cv2.imread(str(tmp_path / "ds" / "truth" / "group01" / "mask.png"), cv2.IMREAD_GRAYSCALE),
                       None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST) > 0
    predictor = Predictor.from_checkpoint(default_model_path(), device="cpu")

    def dice(mask: np.ndarray) -> float:
        return 2 * np.count_nonzero(mask & truth) / (np.count_nonzero(mask) + np.count_nonzero(truth))

    as_is = ImageSegmenter(predictor).segment(image) > 0
    with caplog.at_level("INFO", logger="am.pitch"):
        auto = ImageSegmenter(predictor, scale="auto").segment(image)
    assert "--scale auto segments it at 0.31" in caplog.text
    assert auto.shape == image.shape and set(np.unique(auto)) <= {0, 255}
    np.testing.assert_array_equal(auto, ImageSegmenter(predictor, scale=0.31).segment(image))
    assert dice(auto > 0) > 0.85 and dice(as_is) < 0.6
