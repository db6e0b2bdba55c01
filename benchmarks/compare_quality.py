"""Side-by-side table of several models' quality figures, as written by ``model_quality.py --json``.

    python benchmarks/compare_quality.py shipped=q/shipped.json resnext50=q/resnext50.json

Each figure is read from the same JSON keys that ``model_quality.py`` prints, so a comparison made
on a GPU machine (``benchmarks/gpu_train.sh``) and one made here read alike; a figure a file lacks
(real samples skipped, no synthetic set) shows as ``-``. Prints a Markdown table, one column per model,
then how each model after the first fares against it on the figures the shipped model's targets name,
which is the question a new checkpoint has to answer before it replaces the shipped one: better on
some, worse on none, and no false mark on crop1's blob that the first has not.

The synthetic figures pool 40 images, a few of which hold most of the lost marks, so a difference
there counts only where a paired bootstrap over those images (:mod:`am.evaluate.paired`) puts its
whole 95 % interval on one side of zero; files without per-image counts (written before
``model_quality.py`` kept them) fall back to :data:`TOLERANCE`, as the single real crops always do.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from am.evaluate.paired import LEVEL, Difference, paired_difference

Read = Callable[[dict[str, Any]], Any]
Row = tuple[str, Read]


def synthetic(key: str) -> Read:
    return lambda q: q["synthetic"][key]


def crop(n: int, key: str) -> Read:
    return lambda q: q["real"]["crops"][f"crop{n}"][key]


def tile(name: str, key: str) -> Read:
    return lambda q: q["real"]["tiles"][f"{name}_512"][key]


ROWS: tuple[Row, ...] = (
    ("encoder", lambda q: q["encoder"]),
    ("precision", lambda q: q["precision"]),
    ("synthetic held-out Dice (target >= 0.95)", synthetic("dice_pooled")),
    ("synthetic held-out object F1 (target >= 0.97)", synthetic("f1")),
    ("synthetic marks missed / merged / split",
     lambda q: "{missed} / {merged} / {split}".format(**q["synthetic"]["lost"])),
    ("crop1 Dice", crop(1, "dice")),
    ("crop1 false marks on the blob (target 0)", crop(1, "blob_false_marks")),
    ("crop2 Dice (target >= 0.85)", crop(2, "dice")),
    ("crop3 Dice (target >= 0.85)", crop(3, "dice")),
    ("crop1 / crop2 / crop3 object F1", lambda q: " / ".join(f"{crop(n, 'f1')(q):.3f}" for n in (1, 2, 3))),
    ("tile_a marks / specks", lambda q: "{marks} / {specks}".format(**q["real"]["tiles"]["tile_a_512"])),
    ("tile_b marks / specks", lambda q: "{marks} / {specks}".format(**q["real"]["tiles"]["tile_b_512"])),
)


# The figures a replacement is judged on (the targets' figures), whether higher is better, and for the
# synthetic ones the figure a paired bootstrap over the images recomputes (am.evaluate.paired).
JUDGED: tuple[tuple[str, Read, bool, str | None], ...] = (
    ("synthetic Dice", synthetic("dice_pooled"), True, "dice"),
    ("synthetic object F1", synthetic("f1"), True, "f1"),
    ("crop1 Dice", crop(1, "dice"), True, None),
    ("crop2 Dice", crop(2, "dice"), True, None),
    ("crop3 Dice", crop(3, "dice"), True, None),
    ("crop1 false marks on the blob", crop(1, "blob_false_marks"), False, None),
)
# The real tiles have no reference, so their mark counts are not judged; a count that moves means marks
# joined, lost or split there, which only the overlays can tell apart (a model that joins the stacked
# crescents of tile_a's top rows in pairs scores as well on every judged figure).
TILE_MARKS: tuple[tuple[str, Read], ...] = tuple((name, tile(name, "marks")) for name in ("tile_a", "tile_b"))
# Differences in a score this small are noise between machines and precisions, neither gain nor loss;
# counts (false marks) have none.
TOLERANCE = 0.002


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


def cell(figures: dict[str, Any], read: Read) -> str:
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


def verdict(name: str, figures: dict[str, Any], baseline_name: str, baseline: dict[str, Any]) -> str:
    """One line: where ``name`` is better and worse than the baseline, and whether it could replace it."""
    better, worse, unknown, undecided = [], [], [], []
    images = paired_images(figures, baseline)
    for label, read, higher, figure in JUDGED:
        try:
            change = read(figures) - read(baseline)
        except (KeyError, TypeError):
            unknown.append(label)
            continue
        if figure is not None and images:
            difference = paired_difference(baseline["synthetic"]["per_image"], figures["synthetic"]["per_image"],
                                           figure=figure)
            gain = difference.sign if higher else -difference.sign
            shown = f"{label} ({interval_text(difference)})"
            if gain == 0:
                undecided.append(shown)
        else:
            tolerance = TOLERANCE if isinstance(change, float) else 0
            signed = change if higher else -change
            gain = 1 if signed > tolerance else -1 if signed < -tolerance else 0
            shown = f"{label} ({change:+.4f})" if isinstance(change, float) else f"{label} ({change:+d})"
        if gain > 0:
            better.append(shown)
        elif gain < 0:
            worse.append(shown)
    parts = [f"{name} against {baseline_name}: better on {', '.join(better) or 'nothing'}; "
             f"worse on {', '.join(worse) or 'nothing'}"]
    if undecided:
        parts.append(f"within the spread of the images drawn: {', '.join(undecided)}")
    moved = tile_marks_moved(figures, baseline)
    if moved:
        parts.append(f"marks found on the real tiles changed ({', '.join(moved)}): marks joined, lost or split")
    if unknown:
        parts.append(f"not compared (a file lacks them): {', '.join(unknown)}")
        outcome = f"cannot tell whether it could replace {baseline_name}"
    elif better and not worse and moved:
        outcome = (f"it could replace {baseline_name} only if the real tiles' overlays (model_quality.py --overlays) "
                   "show every mark outlined on its own")
    elif better and not worse:
        outcome = f"it could replace {baseline_name}: measure it with model_quality.py on the CPU before shipping it"
    else:
        outcome = f"{baseline_name} stays"
    rule = (f"synthetic figures count where a paired bootstrap over the {images} held-out images puts the "
            f"change's {100 * LEVEL:.0f} % interval on one side of zero, other figures beyond {TOLERANCE}" if images
            else f"within {TOLERANCE} counts as even")
    return "; ".join(parts) + f" ({rule}). {outcome[0].upper()}{outcome[1:]}."


def tile_marks_moved(figures: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """``"tile_a 23 -> 20"`` for each real tile whose count of marks found differs from the baseline's."""
    moved = []
    for name, read in TILE_MARKS:
        try:
            before, after = read(baseline), read(figures)
        except (KeyError, TypeError):
            continue
        if after != before:
            moved.append(f"{name} {before} -> {after}")
    return moved


def paired_images(figures: dict[str, Any], baseline: dict[str, Any]) -> int:
    """How many held-out images both files score one by one (same seed, same count), or 0 where they cannot
    be paired and the synthetic figures are judged by :data:`TOLERANCE` instead."""
    try:
        a, b = baseline["synthetic"], figures["synthetic"]
        same = a["seed"] == b["seed"] and len(a["per_image"]) == len(b["per_image"])
        return len(a["per_image"]) if same else 0
    except (KeyError, TypeError):
        return 0


def interval_text(d: Difference) -> str:
    return f"{d.change:+.4f}, {100 * d.level:.0f} % interval {d.low:+.4f} to {d.high:+.4f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=parse_model, metavar="NAME=PATH",
                   help="a column's name and the model_quality.py --json file it shows")
    args = p.parse_args(argv)
    models = [(name, load(path)) for name, path in args.models]
    print(table(models))
    if len(models) > 1:
        print()
        (baseline_name, baseline), *others = models
        for name, figures in others:
            print(f"- {verdict(name, figures, baseline_name, baseline)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
