"""The post-processing sweep: its masks are the checkpoint's at the checkpoint's levels, and the script
scores what am.evaluate scores."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from am.errors import InputError
from am.evaluate.metrics import Scores
from am.evaluate.run import evaluate
from am.model.checkpoint import default_model_path
from am.model.masks import mask_from_proba
from am.model.predict import Predictor
from am.model.separate import MIN_SEED_PX
from am.train.data import synthetic_images
from tests.model.test_separate import blobs, components
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "postprocess_sweep.py"


def _load():
    return load_script(SCRIPT)


def test_masks_at_the_checkpoints_levels_are_the_checkpoints_masks() -> None:
    mod = _load()
    meta = Predictor.from_checkpoint(default_model_path(), device="cpu", threads=1).meta
    own = mod.Levels(meta.threshold, meta.seed_threshold, float(MIN_SEED_PX), meta.min_mark_px,
                     meta.min_mark_fraction)
    centres = [(30 + 40 * (i // 4), 30 + 40 * (i % 4)) for i in range(12)]
    touching = blobs([(160, 45), (160, 75)], sigma=14, shape=(200, 200))  # joined at 0.5, cores apart
    proba = np.maximum(blobs(centres, sigma=9, shape=(200, 200)), touching)
    proba[180:187, 150:158] = 0.8  # a 56 px fragment: past the fixed speck size, under 0.3 of a mark
    for area in (1.0, 2.04**2):
        assert np.array_equal(mod.mask_at(proba, own, meta, pixel_area=area),
                              mask_from_proba(proba, meta, pixel_area=area))
    mask = mod.mask_at(proba, own, meta)
    assert not mask[180:187, 150:158].any(), "the fraction of the median mark applies"
    assert components(mask) == 14, "12 marks and the touching pair cut apart"
    big_cores = dataclasses.replace(own, core_px=10 * MIN_SEED_PX)
    assert components(mod.mask_at(proba, big_cores, meta)) == 13, "cores under the core size seed no cut"
    off = dataclasses.replace(own, seed_threshold=None, min_px=0, fraction=0)
    assert np.array_equal(mod.mask_at(proba, off, meta), proba >= meta.threshold)


def test_grid_keeps_only_seed_thresholds_above_the_threshold() -> None:
    mod = _load()
    levels = mod.grid([0.5, 0.6], [None, 0.55, 0.9], [100], [40], [0, 0.3])
    assert len(levels) == 2 * 2 + 1 * 2 + 2 * 2  # None everywhere, 0.55 above 0.5 only, 0.9 everywhere
    assert all(lv.seed_threshold is None or lv.seed_threshold > lv.threshold for lv in levels)
    with pytest.raises(InputError, match="seed threshold above"):
        mod.grid([0.5], [0.4], [100], [40], [0])


def test_script_scores_what_evaluate_scores(tmp_path: Path) -> None:
    # At one tile's size (512 px) the sweep's blended probabilities are the tile's own, so its masks are
    # the pipeline's, which am.evaluate scores; a smaller image is a reflect-padded tile to the pipeline.
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(SCRIPT), "--synthetic", "2", "--size", "512", "--seed", "31337", "--threads", "2",
           "--fractions", "0,0.3", "--json", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["fraction"] for r in rows] == [0.0, 0.3]
    predictor = Predictor.from_checkpoint(default_model_path(), device="cpu", threads=2)
    items = synthetic_images(count=2, size=512, seed=31337, pitch_range=(22.0, 80.0))
    pooled = Scores.combine([r.scores for r in evaluate(predictor, items)])
    own = next(r for r in rows if r["fraction"] == predictor.meta.min_mark_fraction)
    assert own["dice"] == pytest.approx(pooled.dice) and own["f1"] == pytest.approx(pooled.f1)
    starred = [line for line in done.stdout.splitlines() if line.startswith("*")]
    assert len(starred) == 1 and " 0.30 " in starred[0]

    bad = subprocess.run([*cmd[:2], "--thresholds", "half"], cwd=REPO, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "'half' is not a number" in bad.stderr
    no_real = subprocess.run([*cmd, "--real", str(tmp_path / "nothing")], cwd=REPO, capture_output=True, text=True,
                             check=False)
    assert no_real.returncode == 1 and "crop1_image.png is missing" in no_real.stderr
    none_valid = subprocess.run([*cmd, "--seed-thresholds", "0.3"], cwd=REPO, capture_output=True, text=True,
                                check=False)
    assert none_valid.returncode == 1 and "seed threshold above" in none_valid.stderr
