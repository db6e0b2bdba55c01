"""``python -m am.model FILE ...``: what each checkpoint holds, or which one cannot be used and why."""

from __future__ import annotations

from pathlib import Path

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
