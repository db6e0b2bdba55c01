"""The shipped default model: present, small, trained, and good on a small fixed synthetic set."""

from __future__ import annotations

from pathlib import Path

from am.evaluate.heldout import held_out_images
from am.evaluate.metrics import Scores
from am.evaluate.real import evaluate_real
from am.evaluate.run import evaluate
from am.model.checkpoint import default_model_path, load_checkpoint
from am.model.predict import Predictor

MAX_BYTES = 15 * 1024 * 1024


def test_shipped_model_is_small_and_trained() -> None:
    path = default_model_path()
    assert path.is_file(), f"{path} is missing: train it with `make model`"
    assert path.stat().st_size <= MAX_BYTES
    meta, _ = load_checkpoint(path)
    assert meta.trained and meta.validation and meta.training
    assert meta.pixel_scale == 1.0 and meta.in_channels == 1


def test_shipped_model_segments_held_out_synthetic_marks() -> None:
    """The README's held-out figures (Dice 0.917, object F1 0.887 post-processed), kept from slipping."""
    predictor = Predictor.from_checkpoint(default_model_path(), device="cpu", threads=2)
    results = evaluate(predictor, held_out_images())
    pooled = Scores.combine([r.scores for r in results])
    assert pooled.dice >= 0.9, [round(r.scores.dice, 3) for r in results]
    assert pooled.f1 >= 0.88, [round(r.scores.f1, 3) for r in results]


def test_shipped_model_as_the_pipeline_runs_it_on_the_real_samples(real_data: Path) -> None:
    """The README's real-sample figures without test-time augmentation, on normalised input as the
    pipeline gives it: the blob of crop1 clean, crop3 0.906, crop2 0.784."""
    predictor = Predictor.from_checkpoint(default_model_path(), device="cpu", threads=2)
    report = evaluate_real(predictor, real_data)
    crops, tiles = report["crops"], report["tiles"]
    assert crops["crop1"]["blob_false_marks"] == 0, crops["crop1"]
    assert crops["crop3"]["dice"] >= 0.9 and crops["crop2"]["dice"] >= 0.78, crops
    assert tiles["tile_a_512"]["marks"] >= 20 and tiles["tile_b_512"]["marks"] >= 60, tiles


def test_shipped_model_with_d4_tta_on_the_real_samples(real_data: Path) -> None:
    """The README's real-sample figures with --tta d4 (crop1 blob clean, crop2 0.796, no speck on tile_a)."""
    predictor = Predictor.from_checkpoint(default_model_path(), device="cpu", threads=2, tta="d4")
    report = evaluate_real(predictor, real_data)
    crops, tiles = report["crops"], report["tiles"]
    assert crops["crop1"]["blob_false_marks"] == 0, crops["crop1"]
    assert crops["crop2"]["dice"] >= 0.79 and crops["crop3"]["dice"] >= 0.9, crops
    assert tiles["tile_a_512"]["specks"] <= 1, tiles


def test_shipped_model_with_rot180_tta_on_the_real_samples(real_data: Path) -> None:
    """The README's real-sample figures with --tta rot180 (crop1 blob clean, crop2 0.791, crop3 0.901
    with object F1 0.952, no speck on tile_a), measured on the masks the pipeline writes (bf16: crop2 0.788)."""
    predictor = Predictor.from_checkpoint(default_model_path(), device="cpu", threads=2, tta="rot180")
    report = evaluate_real(predictor, real_data)
    crops, tiles = report["crops"], report["tiles"]
    assert crops["crop1"]["blob_false_marks"] == 0, crops["crop1"]
    assert crops["crop2"]["dice"] >= 0.785 and crops["crop3"]["dice"] >= 0.9, crops
    assert crops["crop3"]["f1"] >= 0.94, crops["crop3"]
    assert tiles["tile_a_512"]["specks"] == 0, tiles
