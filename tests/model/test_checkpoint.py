"""Checkpoint round trips and every way a file can fail to be a usable checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from am.errors import CheckpointError
from am.model.build import build_model, load_model, write_test_checkpoint
from am.model.checkpoint import ModelMeta, default_model_path, load_checkpoint, save_checkpoint

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
    with pytest.raises(CheckpointError, match="weights_only"):
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
