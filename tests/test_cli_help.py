"""Every option of every ``python -m am.<name>`` command and benchmark script says what it does in
``--help``.

A user reads ``--help`` before the README; an option listed there with no text (or no default)
leaves them to read the source. The check reads the code, so a new option without help fails
here before it reaches a user.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "am"
SOURCES = (PACKAGE, ROOT / "benchmarks")
COMMANDS = ("pipeline", "worker", "synth", "train", "train.mine", "evaluate", "pseudolabel", "model",
            "register", "scale", "bench", "api", "serve")


def options_without_help(source: Path, root: Path = ROOT) -> list[str]:
    """``file:line option`` (file relative to ``root``) for each ``add_argument`` call in ``source``
    that passes no ``help=``."""
    missing = []
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        is_option = isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"
        if is_option and not any(keyword.arg == "help" for keyword in node.keywords):
            names = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
            missing.append(f"{source.relative_to(root)}:{node.lineno} {' '.join(map(str, names))}")
    return missing


def test_every_option_has_help_text() -> None:
    sources = sorted(path for folder in SOURCES for path in folder.rglob("*.py"))
    missing = [entry for source in sources for entry in options_without_help(source)]
    assert missing == [], "options without help=:\n" + "\n".join(missing)


def test_the_check_finds_an_option_without_help(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text('import argparse\np = argparse.ArgumentParser()\np.add_argument("--seed", type=int)\n'
                      'p.add_argument("--size", type=int, help="side in px")\n')
    assert options_without_help(source, root=tmp_path) == ["probe.py:3 --seed"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_runs(command: str) -> None:
    result = subprocess.run([sys.executable, "-m", f"am.{command}", "--help"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m am."), result.stdout
