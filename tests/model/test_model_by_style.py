"""The by-style breakdown: grouping on hand-made scores, and the script end to end on the shipped model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from am.evaluate.metrics import Scores
from am.synth.render import Style
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "model_by_style.py"


def _load():
    return load_script(SCRIPT)


def _scores(true: int, predicted: int, matched: int, intersection: int = 0, px: int = 0) -> Scores:
    return Scores(intersection, px, px, true, predicted, matched)


def test_groups_pool_their_images_and_count_lost_marks() -> None:
    mod = _load()
    styled = [
        (Style(polarity="bright", pitch=24.0, mark_radius=8.0), _scores(10, 10, 10, 90, 100)),
        (Style(polarity="bright", pitch=105.0, mark_radius=40.0), _scores(4, 6, 3, 10, 20)),
        (Style(polarity="rim", pitch=28.0, mark_radius=12.0), _scores(20, 0, 0, 0, 50)),
    ]
    groups = {(g.grouping, g.label): g for g in mod.group_scores(styled)}
    bright = groups[("polarity", "bright")]
    assert bright.images == 2 and bright.scores.true_objects == 14 and bright.scores.matched_objects == 13
    assert bright.lost == (14 + 16 - 26) == 4
    assert groups[("polarity", "rim")].lost == 20 and groups[("polarity", "rim")].scores.f1 == 0.0
    assert groups[("pitch px", "20-30")].images == 2
    # Numeric bins sort by value, not as text: 20-30 comes before 100-110.
    pitch_labels = [g.label for g in mod.group_scores(styled) if g.grouping == "pitch px"]
    assert pitch_labels == ["20-30", "100-110"]
    assert sum(g.images for g in mod.group_scores(styled) if g.grouping == "shape") == 3


@pytest.mark.skipif(not (REPO / "am" / "models" / "default.pt").is_file(), reason="no shipped model")
def test_script_prints_and_writes_the_groups(tmp_path: Path) -> None:
    out = tmp_path / "by_style.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--count", "3", "--threads", "1", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "polarity:" in done.stdout and "fill (radius/pitch):" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["images"] == 3 and figures["seed"] == 777
    polarity = [g for g in figures["groups"] if g["grouping"] == "polarity"]
    assert sum(g["images"] for g in polarity) == 3
    assert sum(g["true_objects"] for g in polarity) == figures["overall"]["true_objects"]
    bad = subprocess.run([sys.executable, str(SCRIPT), "--count", "0"], cwd=REPO, capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "--count" in bad.stderr
    missing = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tmp_path / "none.pt")], cwd=REPO,
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 1 and "none.pt" in missing.stderr
