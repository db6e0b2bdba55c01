"""Side-by-side table of several models' quality figures, as written by ``model_quality.py --json``.

    python benchmarks/compare_quality.py shipped=q/shipped.json resnext50=q/resnext50.json

Each figure is read from the same JSON keys that ``model_quality.py`` prints, so a comparison made
on a GPU machine (``benchmarks/gpu_train.sh``) and one made here read alike; a figure a file lacks
(real samples skipped, no synthetic set) shows as ``-``. Prints a Markdown table, one column per model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = tuple[str, Callable[[dict[str, Any]], Any]]

ROWS: tuple[Row, ...] = (
    ("encoder", lambda q: q["encoder"]),
    ("precision", lambda q: q["precision"]),
    ("synthetic held-out Dice (target >= 0.95)", lambda q: q["synthetic"]["dice_pooled"]),
    ("synthetic held-out object F1 (target >= 0.97)", lambda q: q["synthetic"]["f1"]),
    ("synthetic marks missed / merged / split",
     lambda q: "{missed} / {merged} / {split}".format(**q["synthetic"]["lost"])),
    ("crop1 Dice", lambda q: q["real"]["crops"]["crop1"]["dice"]),
    ("crop1 false marks on the blob (target 0)", lambda q: q["real"]["crops"]["crop1"]["blob_false_marks"]),
    ("crop2 Dice (target >= 0.85)", lambda q: q["real"]["crops"]["crop2"]["dice"]),
    ("crop3 Dice (target >= 0.85)", lambda q: q["real"]["crops"]["crop3"]["dice"]),
    ("crop1 / crop2 / crop3 object F1", lambda q: " / ".join(f"{q['real']['crops'][f'crop{n}']['f1']:.3f}"
                                                              for n in (1, 2, 3))),
    ("tile_a marks / specks", lambda q: "{marks} / {specks}".format(**q["real"]["tiles"]["tile_a_512"])),
    ("tile_b marks / specks", lambda q: "{marks} / {specks}".format(**q["real"]["tiles"]["tile_b_512"])),
)


def parse_model(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=PATH, e.g. shipped=runs/gpu/shipped.quality.json")
    return name, Path(path)


def load(path: Path) -> dict[str, Any]:
    """The figures of one model; a missing or unreadable file is an error that names it."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: cannot read {path} as model_quality.py's JSON ({exc}); "
                         "write it with model_quality.py --json") from exc


def cell(figures: dict[str, Any], read: Callable[[dict[str, Any]], Any]) -> str:
    try:
        value = read(figures)
    except (KeyError, TypeError):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table(models: list[tuple[str, dict[str, Any]]]) -> str:
    names = [name for name, _ in models]
    lines = ["| figure | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    lines += ["| " + label + " | " + " | ".join(cell(q, read) for _, q in models) + " |" for label, read in ROWS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=parse_model, metavar="NAME=PATH",
                   help="a column's name and the model_quality.py --json file it shows")
    args = p.parse_args(argv)
    print(table([(name, load(path)) for name, path in args.models]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
