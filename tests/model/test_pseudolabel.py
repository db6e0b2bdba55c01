"""Pseudo-labelling: confidence rules on known probabilities, and the whole recipe as a quick run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from am.imageio import read_image, write_png
from am.model.checkpoint import load_checkpoint
from am.pseudolabel.core import confident_labels
from am.train.data import synthetic_images

REPO = Path(__file__).resolve().parents[2]


def test_confident_labels_rules() -> None:
    proba = np.full((40, 40), 0.5, dtype=np.float32)
    proba[:10, :] = 0.05  # confident background
    proba[20:30, 20:30] = 0.95  # a confident mark
    proba[35, 35] = 0.99  # a confident speck, too small to be a mark
    mask, known = confident_labels(proba, low=0.2, high=0.8, min_mark_px=20)
    assert known[:10].all() and not known[12, 5]  # uncertain middle stays unknown
    assert mask[25, 25] == 255 and known[25, 25]
    assert not known[20, 25] and not known[19, 25]  # the mark's fringe is left to the big model
    assert mask[35, 35] == 0 and not known[35, 35]
    assert set(np.unique(mask)) <= {0, 255}


def test_cli_runs_the_recipe(tmp_path: Path) -> None:
    (item,) = synthetic_images(count=1, size=192, seed=21)
    write_png(tmp_path / "big.png", item.image)
    write_png(tmp_path / "labels" / "0_0.png", item.mask[:64, :64] * 255)
    write_png(tmp_path / "labels" / "96_64.png", item.mask[64:128, 96:160] * 255)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "am.pseudolabel", str(tmp_path / "big.png"), "--labels", str(tmp_path / "labels"),
           "--out", str(out), "--small-encoder", "tu-mobilenetv3_small_100", "--big-encoder",
           "tu-mobilenetv3_small_100", "--small-epochs", "1", "--big-epochs", "1", "--steps-per-epoch", "2",
           "--batch-size", "2", "--crop", "64", "--threads", "1", "--tta", "flips", "--log-level", "WARNING"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "get no gradient" not in done.stderr  # the small model's fixed depth is no matter for its user
    for name in ("pseudo_mask.png", "known.png", "overlay.png", "small.pt", "model.pt", "summary.json"):
        assert (out / name).is_file(), name
    mask = read_image(out / "pseudo_mask.png")
    known = read_image(out / "known.png")
    assert mask.shape == item.image.shape
    # The person's labels are kept as given, and trusted.
    np.testing.assert_array_equal(mask[:64, :64] > 0, item.mask[:64, :64] > 0)
    assert (known[64:128, 96:160] == 255).all()
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["known_fraction"] <= 1 and summary["config"]["tta"] == "flips"
    # The second crop (sorted by name) validates both models and neither learns it.
    assert summary["validation"]["on"] == "held-out crop at x 96, y 64"
    assert {"dice", "f1"} <= set(summary["validation"]["small_model"]) & set(summary["validation"]["big_model"])
    assert load_checkpoint(out / "small.pt")[0].training["data"]["crops"] == 1
    bad = subprocess.run([*cmd[:4], "--labels", str(tmp_path), "--out", str(out)], cwd=REPO, capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 1 and "X_Y.png" in bad.stderr
