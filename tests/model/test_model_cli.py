"""``python -m am.model FILE ...``: what each checkpoint holds, or which one cannot be used and why."""

from __future__ import annotations

from pathlib import Path

import torch

from am.cli import EXIT_ERROR, EXIT_OK
from am.model.__main__ import main
from am.model.checkpoint import default_model_path


def test_every_file_is_described_or_named_with_what_is_wrong(tmp_path: Path, tiny_model: Path, capsys) -> None:
    missing = tmp_path / "absent.pt"
    cut_short = tmp_path / "cut.pt"
    cut_short.write_bytes(default_model_path().read_bytes()[:1000])
    assert main([str(default_model_path()), str(missing), str(tiny_model), str(cut_short)]) == EXIT_ERROR
    out, err = capsys.readouterr()
    shipped, tiny = out.splitlines()
    assert shipped.startswith(f"{default_model_path()}: Unet with tu-mobilenetv3_large_100, decoder 128,64,32,16,8")
    assert ", trained, its training validation: Dice " in shipped
    assert tiny.startswith(f"{tiny_model}: ") and "UNTRAINED" in tiny
    assert f"error: {missing} is not a file" in err and f"error: {cut_short} " in err
    assert "2 of 4 checkpoint(s) cannot be used" in err


def test_a_usable_checkpoint_exits_zero(tiny_model: Path, capsys) -> None:
    assert main([str(tiny_model)]) == EXIT_OK
    assert capsys.readouterr().err == ""


def _edited(tiny_model: Path, out: Path, **meta_changes) -> Path:
    payload = torch.load(tiny_model, weights_only=True)
    payload["meta"].update(meta_changes)
    torch.save(payload, out)
    return out


def test_every_bad_file_is_named_and_the_rest_still_checked(tmp_path: Path, tiny_model: Path, capsys) -> None:
    # Each of these was a traceback (stopping before the next file) or a silent pass of a file workers cannot use.
    flipped = tmp_path / "flip.pt"
    data = bytearray(tiny_model.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    flipped.write_bytes(bytes(data))
    vit = _edited(tiny_model, tmp_path / "vit.pt", encoder="tu-vit_tiny_patch16_224")
    depth = _edited(tiny_model, tmp_path / "depth.pt", encoder_depth=5.0)
    nan_mean = _edited(tiny_model, tmp_path / "nan.pt", input_mean=float("nan"))
    files = [flipped, vit, depth, nan_mean, "s3://models/m.pt", tiny_model]
    assert main([str(f) for f in files]) == EXIT_ERROR
    out, err = capsys.readouterr()
    assert out.startswith(f"{tiny_model}: Unet with tu-mobilenetv3_small_100")
    assert f"error: {flipped} is damaged: record archive/data/" in err
    assert f"error: {vit}: segmentation-models-pytorch cannot build a Unet with encoder 'tu-vit_tiny" in err
    assert f"error: {depth}: encoder_depth 5.0 must be a whole number" in err
    assert f"error: {nan_mean}: input_mean nan must be a finite number" in err
    assert "error: model s3://models/m.pt is an S3 URI" in err and "download it first" in err
    assert "5 of 6 checkpoint(s) cannot be used" in err and "Traceback" not in err


def test_validation_figures_are_printed_only_where_they_are_numbers(tmp_path: Path, tiny_model: Path, capsys) -> None:
    partial = _edited(tiny_model, tmp_path / "partial.pt", trained=True, validation={"dice": 0.5, "f1": None})
    full = _edited(tiny_model, tmp_path / "full.pt", trained=True, validation={"dice": 0.5, "f1": 0.25})
    assert main([str(partial), str(full)]) == EXIT_OK
    first, second = capsys.readouterr().out.splitlines()
    assert first.endswith(", trained") and second.endswith(", trained, its training validation: Dice 0.500, "
                                                           "object F1 0.250")


def test_an_unreadable_file_is_named_and_the_rest_still_checked(tmp_path: Path, tiny_model: Path, capsys,
                                                                monkeypatch) -> None:
    import errno

    import am.model.__main__ as cli

    locked = tmp_path / "locked.pt"
    locked.write_bytes(tiny_model.read_bytes())
    describe = cli.describe

    def unreadable(path):
        if Path(path) == locked:  # what reading a file without read permission raises
            raise PermissionError(errno.EACCES, "Permission denied", str(locked))
        return describe(path)

    monkeypatch.setattr(cli, "describe", unreadable)
    assert main([str(locked), str(tiny_model)]) == EXIT_ERROR
    out, err = capsys.readouterr()
    assert out.startswith(f"{tiny_model}: ")
    assert f"error: cannot use {locked}: Permission denied (EACCES); fix the permissions of {locked} so that " \
           "this user can read it" in err
    assert "1 of 2 checkpoint(s) cannot be used" in err


def test_the_parameter_count_is_the_models_own_not_its_batch_norm_statistics(capsys) -> None:
    from am.model.build import load_model

    _meta, model = load_model(default_model_path())
    parameters = sum(p.numel() for p in model.parameters())
    with_statistics = sum(t.numel() for t in model.state_dict().values())
    assert f"{parameters / 1e6:.1f}" != f"{with_statistics / 1e6:.1f}"  # 4.5 against 4.6: the test can tell
    assert main([str(default_model_path())]) == EXIT_OK
    assert f", {parameters / 1e6:.1f} M parameters, " in capsys.readouterr().out
