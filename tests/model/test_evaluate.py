"""python -m am.evaluate and the real-sample report, run end to end with a small model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from am.evaluate.lost import LostMarks
from am.evaluate.real import blob_false_marks, evaluate_real
from am.evaluate.run import evaluate, panels
from am.imageio import read_image, write_png
from am.model.predict import Predictor
from am.train.data import Labelled, synthetic_images

REPO = Path(__file__).resolve().parents[2]


def test_cli_table_json_and_side_by_side(tmp_path: Path, tiny_model: Path) -> None:
    items = synthetic_images(count=2, size=96, seed=4)
    for i, item in enumerate(items):
        write_png(tmp_path / "img" / f"a{i}.png", item.image)
        write_png(tmp_path / "msk" / f"a{i}.png", item.mask * 255)
    cmd = [sys.executable, "-m", "am.evaluate", "--model", str(tiny_model), "--images", str(tmp_path / "img"),
           "--masks", str(tmp_path / "msk"), "--side-by-side", str(tmp_path / "sbs"), "--json",
           str(tmp_path / "scores.json"), "--threads", "1", "--tta", "flips"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "overall (pooled)" in done.stdout and "a0" in done.stdout and "a1" in done.stdout
    report = json.loads((tmp_path / "scores.json").read_text())
    assert set(report["images"]) == {"a0", "a1"} and 0 <= report["overall"]["dice"] <= 1
    overall, lost = report["overall"], LostMarks(**report["lost"])
    assert lost.unmatched_true + lost.unmatched_predicted == (
        overall["true_objects"] + overall["predicted_objects"] - 2 * overall["matched_objects"])
    assert lost == LostMarks.combine([LostMarks(**image["lost"]) for image in report["images"].values()])
    assert lost.summary() in done.stdout
    assert report["tta"] == "flips" and "tta flips" in done.stdout
    panel = read_image(tmp_path / "sbs" / "a0.png")
    assert panel.ndim == 3 and panel.shape[0] == 2 * 96  # small images are shown enlarged twice
    missing = subprocess.run([*cmd[:3], "--model", str(tmp_path / "none.pt"), "--synthetic", "1"], cwd=REPO,
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr  # a usage error, found before any work


def test_scores_agree_with_the_predictions(tiny_model: Path) -> None:
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu")
    items = synthetic_images(count=1, size=64, seed=9)
    (result,) = evaluate(predictor, items)
    truth = items[0].mask > 0
    inter = int((truth & result.predicted).sum())
    assert result.scores.intersection == inter
    assert result.scores.predicted_px == int(result.predicted.sum())


def test_evaluate_tiles_as_the_checkpoint_was_validated(tiny_model: Path, monkeypatch) -> None:
    # A model trained with --tile-size 256 was validated on 256 px tiles; am.evaluate must score it
    # the same way (it tiled at 512 whatever the checkpoint said).
    from dataclasses import replace

    import am.evaluate.run as run

    predictor = Predictor.from_checkpoint(tiny_model, device="cpu")
    predictor._meta = replace(predictor.meta, tile_size=256)
    seen = []

    def spy(predictor, image, *, tile_size, scale):
        seen.append(tile_size)
        return np.zeros(image.shape, bool)

    monkeypatch.setattr(run, "predict_image_mask", spy)
    evaluate(predictor, synthetic_images(count=1, size=64, seed=9))
    evaluate(predictor, synthetic_images(count=1, size=64, seed=9), tile_size=512)
    assert seen == [256, 512]


def test_evaluate_reads_one_image_at_a_time_and_can_drop_masks(tiny_model: Path) -> None:
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu")
    items = synthetic_images(count=3, size=64, seed=9)
    read: list[str] = []

    def lazily() -> Iterator[Labelled]:
        for item in items:
            read.append(item.name)
            yield item

    def progress(iterable: Iterable[Labelled]) -> Iterator[Labelled]:
        for count, item in enumerate(iterable, start=1):
            # The image now being scored is the last one read: none is read ahead.
            assert read[-1] == item.name and len(read) == count
            yield item

    results = evaluate(predictor, lazily(), keep_predicted=False, progress=progress)
    assert [r.name for r in results] == [i.name for i in items] and all(r.predicted is None for r in results)
    assert [r.scores for r in results] == [r.scores for r in evaluate(predictor, items)]


def test_cli_pairs_every_image_before_reading_any(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"not a png")  # would fail if it were read
    (tmp_path / "img" / "b.png").write_bytes(b"not a png")
    (tmp_path / "msk" / "a.png").write_bytes(b"not a png")
    done = subprocess.run([sys.executable, "-m", "am.evaluate", "--model", str(tiny_model), "--images",
                           str(tmp_path / "img"), "--masks", str(tmp_path / "msk"), "--threads", "1"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "b.png has no mask of the same name" in done.stderr


def test_cli_refuses_an_image_too_small_to_score_before_any_model_work(tmp_path: Path, tiny_model: Path) -> None:
    for folder, size in (("img", 40), ("msk", 40)):
        (tmp_path / folder).mkdir()
        write_png(tmp_path / folder / "a.png", np.zeros((size, size), np.uint8))
    command = [sys.executable, "-m", "am.evaluate", "--model", str(tiny_model), "--images", str(tmp_path / "img"),
               "--masks", str(tmp_path / "msk"), "--threads", "1"]
    done = subprocess.run([*command, "--scale", "0.5"], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (f"{tmp_path / 'img' / 'a.png'} is 40 x 40 px (height x width, 20 x 20 px at --scale 0.5); the model "
            "needs at least 32 px on each side") in done.stderr
    assert subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False).returncode == 0


def test_panels_colour_errors() -> None:
    image = np.full((8, 8), 100, dtype=np.uint8)
    truth = np.zeros((8, 8), dtype=np.uint8)
    truth[0:4] = 1
    pred = np.zeros((8, 8), dtype=bool)
    pred[2:6] = True
    out = panels(image, truth, pred)
    errors = out[:, -8 * 2 :][::2, ::2]  # last panel, undo the 2x enlargement
    assert tuple(errors[0, 0]) == (40, 90, 255) and tuple(errors[3, 0]) == (0, 200, 0)
    assert tuple(errors[5, 0]) == (230, 40, 40)


def test_blob_false_marks_counts_only_the_blob() -> None:
    predicted = np.zeros((245, 245), dtype=bool)
    reference = np.zeros((245, 245), dtype=bool)
    assert blob_false_marks(predicted, reference) == (0, 0)
    predicted[40:55, 90:100] = True  # on the blob, no reference mark nearby
    predicted[150:160, 150:160] = True  # elsewhere
    marks, pixels = blob_false_marks(predicted, reference)
    assert marks == 1 and pixels == 150


def test_real_report_runs(real_data: Path, tiny_model: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(tiny_model, device="cpu")
    report = evaluate_real(predictor, real_data, overlays=tmp_path)
    assert set(report["crops"]) == {"crop1", "crop2", "crop3"}
    assert report["crops"]["crop2"]["reference_marks"] > 20
    for crop in report["crops"].values():  # every lost mark and false mark accounted for
        lost = LostMarks(**crop["lost"])
        matched = round(crop["f1"] * (crop["reference_marks"] + crop["predicted_marks"]) / 2)
        assert lost.unmatched_true == crop["reference_marks"] - matched
        assert lost.unmatched_predicted == crop["predicted_marks"] - matched
    assert (tmp_path / "tile_a_512.png").is_file() and (tmp_path / "crop1.png").is_file()
