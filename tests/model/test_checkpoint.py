"""Checkpoint round trips and every way a file can fail to be a usable checkpoint."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from am.errors import CheckpointError
from am.model.build import build_model, load_model, write_test_checkpoint
from am.model.checkpoint import (
    ModelMeta,
    architecture_problem,
    check_buildable,
    default_model_path,
    load_checkpoint,
    save_checkpoint,
)

TINY = {"encoder": "tu-mobilenetv3_small_100", "encoder_depth": 5, "decoder_channels": (32, 16, 8, 8, 4)}


def _model(seed: int = 0, **overrides) -> tuple[ModelMeta, torch.nn.Module]:
    meta = ModelMeta(**{**TINY, **overrides})
    torch.manual_seed(seed)
    return meta, build_model(meta)


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    meta, model = _model(threshold=0.4, training={"images": 3, "seeds": [1, 2]}, validation={"dice": 0.9},
                         trained=True, pixel_scale=2.0)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, meta)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "am-segm-checkpoint" and raw["version"] == 1
    loaded_meta, state = load_checkpoint(path)
    assert loaded_meta == meta
    for key, tensor in model.state_dict().items():
        assert torch.equal(state[key], tensor)


def test_half_storage_is_smaller_and_loads_as_fp32(tmp_path: Path) -> None:
    meta, model = _model()
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    save_checkpoint(full, model, meta)
    save_checkpoint(half, model, meta, storage="fp16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    _, state = load_checkpoint(half)
    reference = model.state_dict()
    for key, tensor in state.items():
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32
            torch.testing.assert_close(tensor, reference[key], rtol=2e-3, atol=1e-4)
        else:
            assert torch.equal(tensor, reference[key])


def test_half_storage_keeps_what_fp16_cannot_hold(tmp_path: Path) -> None:
    meta, model = _model()
    state = model.state_dict()
    bn = next(k for k in state if k.endswith("running_var"))
    conv = next(k for k, v in state.items() if k.endswith(".weight") and v.ndim == 4)
    with torch.no_grad():
        state[bn][:4] = 7e4  # beyond fp16's 65504
        state[conv].view(-1)[0] = 1e5
    path = tmp_path / "half.pt"
    save_checkpoint(path, model, meta, storage="fp16")
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert raw[bn].dtype == torch.float32 and raw[conv].dtype == torch.float32
    assert sum(v.dtype == torch.float16 for v in raw.values()) > len(raw) / 2  # the rest is still halved
    _, loaded = load_checkpoint(path)
    assert torch.equal(loaded[bn], state[bn]) and loaded[conv].view(-1)[0] == 1e5


def test_non_finite_weights_are_refused_on_save_and_on_load(tmp_path: Path) -> None:
    meta, model = _model()
    key = next(k for k, v in model.state_dict().items() if k.endswith(".weight") and v.ndim == 4)
    with torch.no_grad():
        model.state_dict()[key].view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match=f"{key} holds inf or NaN"):
        save_checkpoint(tmp_path / "nan.pt", model, meta)
    assert not (tmp_path / "nan.pt").exists()
    payload = {"format": "am-segm-checkpoint", "version": 1, "meta": meta.to_dict(),
               "state_dict": dict(model.state_dict())}
    torch.save(payload, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign.pt holds inf or NaN in 1 tensor\(s\), first"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_load_from_bytes_and_load_model(tmp_path: Path) -> None:
    path = write_test_checkpoint(tmp_path / "tiny.pt", seed=3)
    meta_a, _ = load_checkpoint(path.read_bytes())
    meta_b, model = load_model(path)
    assert meta_a == meta_b and not meta_b.trained and not model.training


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_folder_is_called_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"is a folder; pass the checkpoint file \(\.pt\) inside it"):
        load_checkpoint(tmp_path)


def test_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickle_refused_by_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "am-segm-checkpoint", "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match=r"holds objects that safe loading refuses \(WeightsUnpickler error: "
                                              r"Unsupported global: GLOBAL print was not an allowed global by "
                                              r"default\); only am-segm checkpoints") as refused:
        load_checkpoint(path)
    # torch's own advice (load it unsafely, or allowlist the global) is not passed on.
    assert "weights_only" not in str(refused.value) and "safe_globals" not in str(refused.value)


@pytest.mark.parametrize(("content", "said"), [
    (b"II*\x00" + bytes(100), "is not a torch checkpoint: it is a TIFF image; pass a checkpoint written by"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "it is a PNG image"),
    (b"", "it is empty"),
    (b"hello world", "it does not start as one (its first bytes are b'hello wo')"),
])
def test_a_file_that_is_no_checkpoint_is_called_what_it_is(tmp_path: Path, content: bytes, said: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(said)):
        load_checkpoint(path)


def test_wrong_format_and_version(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="not an am-segm checkpoint"):
        load_checkpoint(plain)
    meta, model = _model()
    path = tmp_path / "v.pt"
    save_checkpoint(path, model, meta)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)


def test_unknown_encoder_and_architecture(tmp_path: Path) -> None:
    meta, model = _model()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, meta)
    for field, value, message in (("encoder", "resnet9000", "unknown"), ("architecture", "FPN", "not supported")):
        payload = torch.load(path, weights_only=True)
        payload["meta"][field] = value
        torch.save(payload, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / "bad.pt")


def test_state_dict_that_does_not_fit(tmp_path: Path) -> None:
    meta, model = _model()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, meta)
    payload = torch.load(path, weights_only=True)
    payload["meta"]["decoder_channels"] = [32, 16, 8, 8, 8]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_meta_validation() -> None:
    with pytest.raises(CheckpointError, match="threshold"):
        ModelMeta(**TINY, threshold=1.5)
    with pytest.raises(CheckpointError, match="decoder_channels"):
        ModelMeta(encoder="resnet18", encoder_depth=5, decoder_channels=(16, 8))


def test_default_model_path_is_inside_the_package() -> None:
    path = default_model_path()
    assert path.name == "default.pt" and path.parent.name == "models" and path.parent.parent.name == "am"


def _flip_middle(data: bytes, count: int = 64) -> bytes:
    """The reviewer's damage: ``count`` bytes inverted in the middle of the file (inside tensor data)."""
    damaged = bytearray(data)
    for i in range(len(damaged) // 2, len(damaged) // 2 + count):
        damaged[i] ^= 0xFF
    return bytes(damaged)


def test_flipped_bytes_are_refused_naming_the_record(tmp_path: Path) -> None:
    # torch does not check the zip CRCs: without our check these weights load, changed, without a word.
    good = write_test_checkpoint(tmp_path / "tiny.pt")
    damaged = tmp_path / "flip.pt"
    damaged.write_bytes(_flip_middle(good.read_bytes()))
    with pytest.raises(CheckpointError, match=r"flip\.pt is damaged: record archive/data/\d+ does not match the "
                                              r"checksum written with it.*copy or download the file again"):
        load_checkpoint(damaged)
    with pytest.raises(CheckpointError, match=r"<bytes> is damaged: record archive/data/\d+"):
        load_checkpoint(damaged.read_bytes())  # what Predictor.from_checkpoint gets from bytes
    load_checkpoint(good)
    load_checkpoint(good.read_bytes())


def test_a_damaged_zip_directory_is_named_too(tmp_path: Path) -> None:
    good = write_test_checkpoint(tmp_path / "tiny.pt")
    data = bytearray(good.read_bytes())
    central = data.rfind(b"PK\x01\x02")  # the last central directory record: its header fields made nonsense
    data[central + 20: central + 28] = b"\xff" * 8
    (tmp_path / "dir.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"dir\.pt is damaged: its zip structure cannot be read \(EOFError\); "
                                              "copy or download the file again"):
        load_checkpoint(tmp_path / "dir.pt")


def test_an_s3_uri_made_into_a_path_is_named_as_one() -> None:
    # argparse's type=Path turns s3://bucket/key into s3:/bucket/key; "does not exist" would mislead.
    with pytest.raises(CheckpointError, match=r"model s3://models/m\.pt is an S3 URI, which only python -m "
                                              r"am\.pipeline --backend aws and its workers download; download it"):
        load_checkpoint(Path("s3://models/m.pt"))


def _payload_with(tmp_path: Path, **meta_changes) -> bytes:
    path = write_test_checkpoint(tmp_path / "tiny.pt")
    payload = torch.load(path, weights_only=True)
    payload["meta"].update(meta_changes)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


UNBUILDABLE = "tu-vit_tiny_patch16_224"  # timm knows it; it has no feature pyramid, so no smp U-Net


def test_an_encoder_smp_cannot_build_is_a_checkpoint_error(tmp_path: Path) -> None:
    meta = ModelMeta(**{**TINY, "encoder": UNBUILDABLE})  # a name timm knows passes the metadata rules
    with pytest.raises(CheckpointError, match=f"cannot build a Unet with encoder '{UNBUILDABLE}'.*Unsupported model "
                                              "downsampling pattern; use an encoder"):
        check_buildable(meta)
    with pytest.raises(CheckpointError, match=r"^<bytes>: segmentation-models-pytorch cannot build"):
        load_checkpoint(_payload_with(tmp_path, encoder=UNBUILDABLE))
    assert "cannot build" in architecture_problem(**{**TINY, "encoder": UNBUILDABLE})
    assert architecture_problem(**TINY) is None
    assert "encoder_depth 5.0 must be a whole number" in architecture_problem(**{**TINY, "encoder_depth": 5.0})


BAD_META = [
    ("encoder_depth", 5.0, "encoder_depth 5.0 must be a whole number (int), not a float"),
    ("tile_size", 512.0, "tile_size 512.0 must be a whole number (int), not a float"),
    ("tile_size", True, "tile_size True must be a whole number (int), not a bool"),
    ("tile_size", 32, "tile_size 32 must be a multiple of 32 and at least 64"),
    ("in_channels", True, "in_channels True must be a whole number"),
    ("refine_channels", 0.0, "refine_channels 0.0 must be a whole number"),
    ("decoder_channels", [32.7, 16, 8, 8, 4], "decoder_channels [32.7, 16, 8, 8, 4] must be whole numbers (int): "
                                              "32.7 is a float"),
    ("decoder_channels", 32, "decoder_channels 32 must be a list of whole numbers"),
    ("input_mean", float("nan"), "input_mean nan must be a finite number"),
    ("input_mean", "0.5", "input_mean '0.5' must be a finite number"),
    ("input_std", float("inf"), "input_std inf must be a finite number"),
    ("input_std", 0.0, "input_std 0.0 must be > 0"),
    ("pixel_scale", float("inf"), "pixel_scale inf must be a finite number"),
    ("threshold", "0.5", "threshold '0.5' must be a finite number"),
    ("seed_threshold", float("nan"), "seed_threshold nan must be a finite number"),
    ("trained", "no", "trained 'no' must be true or false"),
    ("training", None, "training None must be a dict"),
    ("validation", {"dice": "x", "f1": 1}, "validation dice 'x' must be a number"),
    ("validation", {"dice": 0.8, "f1": True}, "validation f1 True must be a number"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_META, ids=[f"{f}={v!r}" for f, v, _ in BAD_META])
def test_metadata_values_are_checked(tmp_path: Path, field: str, value, message: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(message)):
        ModelMeta(**{**TINY, field: value})
    with pytest.raises(CheckpointError, match=r"^<bytes>: " + re.escape(message) + r".*train or export the model"):
        load_checkpoint(_payload_with(tmp_path, **{field: value}))


def test_numpy_numbers_become_plain_ones_that_save_and_load(tmp_path: Path) -> None:
    meta = ModelMeta(**{**TINY, "encoder_depth": np.int64(5), "threshold": np.float32(0.25), "trained": np.bool_(True),
                        "decoder_channels": np.array([32, 16, 8, 8, 4]).tolist()})
    assert type(meta.encoder_depth) is int and type(meta.threshold) is float and meta.trained is True
    save_checkpoint(tmp_path / "m.pt", build_model(meta), meta)
    assert load_checkpoint(tmp_path / "m.pt")[0] == meta
