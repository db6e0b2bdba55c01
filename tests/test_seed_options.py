"""Every seed option takes 0..2**32-1 and refuses anything else as a usage error, before any work."""

from __future__ import annotations

import importlib

import pytest

from am.cli import MAX_SEED, seed_option

# (module, the arguments before the seed): each would otherwise start reading or generating.
COMMANDS = [
    ("am.train.__main__", ["--synthetic", "2", "--epochs", "1", "--out", "m.pt", "--seed"]),
    ("am.train.__main__", ["--synthetic", "2", "--epochs", "1", "--out", "m.pt", "--synthetic-seed"]),
    ("am.evaluate.__main__", ["--synthetic", "1", "--seed"]),
    ("am.pseudolabel.__main__", ["image.png", "--labels", "labels", "--out", "out", "--seed"]),
    ("am.train.mine", ["--out", "mined", "--seed"]),
    ("am.synth.__main__", ["dataset", "out", "--seed"]),
    ("am.synth.__main__", ["tiles", "out", "--seed"]),
]


@pytest.mark.parametrize("value", ["-1", str(MAX_SEED + 1), "99999999999999999999", "1.5"])
@pytest.mark.parametrize(("module", "before"), COMMANDS, ids=[f"{m}:{b[-1]}" for m, b in COMMANDS])
def test_a_seed_out_of_range_is_a_usage_error(module, before, value, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main([*before, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{before[-1]}: invalid seed_option value" not in err, "argparse's own words name the function"
    assert value in err and ("outside 0..4294967295" in err or "is not a whole number" in err), err
    assert list(tmp_path.iterdir()) == [], "nothing is written before the options are checked"


def test_the_ends_of_the_range_are_seeds() -> None:
    assert seed_option("0") == 0 and seed_option(str(MAX_SEED)) == MAX_SEED
