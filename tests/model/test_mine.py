"""Mining hard synthetic images: the worst-scored ones are kept, in the training layout, and nothing else."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from am.errors import InputError
from am.evaluate.metrics import score
from am.imageio import read_image
from am.model.checkpoint import default_model_path
from am.model.predict import Predictor
from am.model.whole import predict_image_mask
from am.synth.dataset import iter_samples
from am.train.data import load_split
from am.train.mine import image_quality, main, mine_hard

COUNT, KEEP, SIZE, SEED = 6, 2, 128, 5


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_checkpoint(default_model_path(), device="cpu", threads=2)


def test_keeps_the_lowest_quality_images_with_their_masks_and_scores(tmp_path, predictor):
    report = mine_hard(predictor, tmp_path, count=COUNT, keep=KEEP, size=SIZE, seed=SEED)

    # Score every rendered image independently and check the kept ones are the worst.
    samples = list(iter_samples(SEED, COUNT, size=SIZE, pitch_range=(20.0, 85.0)))
    qualities = []
    for sample in samples:
        predicted = predict_image_mask(predictor, sample.image)  # the mask mining scores: the pipeline's
        qualities.append(image_quality(score(sample.mask > 0, predicted)))
    expected = sorted(range(COUNT), key=lambda i: (qualities[i], i))[:KEEP]
    assert [m.index for m in report.kept] == expected
    assert report.rendered == COUNT
    assert report.kept_scores.dice <= report.all_scores.dice

    group = tmp_path / "train" / "hard" / f"seed{SEED}"
    assert report.group == group
    names = sorted(p.name for p in (group / "source").glob("*.png"))
    assert names == sorted(f"{i:05d}.png" for i in expected)
    for i in expected:
        assert np.array_equal(read_image(group / "source" / f"{i:05d}.png"), samples[i].image)
        assert np.array_equal(read_image(group / "mask" / f"{i:05d}.png") > 0, samples[i].mask > 0)
    with open(group / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [f"{i:05d}.png" for i in expected]
    assert [float(r["quality"]) for r in rows] == pytest.approx([qualities[i] for i in expected], abs=1e-4)
    assert rows[0]["polarity"] == samples[expected[0]].style.polarity

    # am.train reads them as a training split.
    assert len(load_split(tmp_path, "train")) == KEEP


def test_refuses_to_mix_into_an_earlier_mining_unless_forced(tmp_path, predictor):
    mine_hard(predictor, tmp_path, count=3, keep=2, size=SIZE, seed=SEED)
    with pytest.raises(InputError, match="already holds mined images"):
        mine_hard(predictor, tmp_path, count=3, keep=1, size=SIZE, seed=SEED)
    report = mine_hard(predictor, tmp_path, count=3, keep=1, size=SIZE, seed=SEED, force=True)
    assert len(list((report.group / "source").glob("*.png"))) == 1
    assert len(list((report.group / "mask").glob("*.png"))) == 1


def test_an_interrupted_mining_leaves_the_earlier_one_whole(tmp_path, predictor, monkeypatch):
    import am.train.mine as mine

    first = mine_hard(predictor, tmp_path, count=3, keep=2, size=SIZE, seed=SEED)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in first.group.rglob("*") if p.is_file()}
    real_write_png = mine.write_png
    written = []

    def interrupted(path, image):
        written.append(path)
        if len(written) == 2:  # an image written, its mask not
            raise KeyboardInterrupt
        real_write_png(path, image)

    monkeypatch.setattr(mine, "write_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mine_hard(predictor, tmp_path, count=3, keep=1, size=SIZE, seed=SEED, force=True)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # the earlier group as it was, no staging folder left
    assert len(load_split(tmp_path, "train")) == 2


@pytest.mark.parametrize("count, keep, size", [(0, 1, 128), (3, 4, 128), (3, 0, 128), (3, 1, 100)])
def test_bad_sizes_are_refused(tmp_path, predictor, count, keep, size):
    with pytest.raises(InputError):
        mine_hard(predictor, tmp_path, count=count, keep=keep, size=size)
    assert not (tmp_path / "train").exists()


def test_command_line_summary_and_bad_options(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--count", "3", "--keep", "1", "--size", str(SIZE),
                 "--seed", str(SEED), "--log-level", "WARNING"]) == 0
    out = capsys.readouterr().out
    assert "rendered 3 images" in out and "kept the 1 hardest" in out and "polarity:" in out
    assert main(["--out", str(tmp_path), "--count", "3", "--keep", "1", "--size", str(SIZE),
                 "--seed", str(SEED), "--log-level", "WARNING"]) != 0  # the folder is taken
    assert "already holds mined images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), "--count", "2", "--keep", "3"])
    assert exc.value.code == 2


@pytest.mark.parametrize("threads, words", [("-1", "--threads -1: give a number of CPU threads >= 1"),
                                             ("999", "--threads 999: this machine has")])
def test_a_thread_count_the_machine_cannot_run_is_a_usage_error_before_anything_runs(tmp_path, monkeypatch, capsys,
                                                                                   threads, words):
    _no_rendering(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "root"), "--threads", threads])
    assert exc.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "root").exists()


def _no_rendering(monkeypatch):
    """Make rendering, or loading a model, fail the test: the output must be refused before either."""
    import am.train.mine as mine

    def rendered(*args, **kwargs):
        raise AssertionError("an image was rendered before the output was checked")

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(mine, "iter_samples", rendered)
    monkeypatch.setattr(mine.Predictor, "from_checkpoint", loaded)


@pytest.mark.parametrize("blocked, error, words", [
    ("", InputError, "is a file; give a folder for the training root (--out)"),
    ("train", NotADirectoryError, "root/train'"),
    ("train/hard/seed5", InputError, "root/train/hard/seed5 is a file, where mined images go"),
    (".synth.partial-hard-seed5", NotADirectoryError, "root/.synth.partial-hard-seed5'"),  # staged in at the end
])
def test_an_output_that_cannot_be_written_is_refused_before_any_image_is_rendered(tmp_path, monkeypatch, blocked,
                                                                                  error, words):
    root = tmp_path / "root"
    (root / blocked).parent.mkdir(parents=True, exist_ok=True)
    (root / blocked if blocked else root).write_text("a file where a folder goes")
    _no_rendering(monkeypatch)
    with pytest.raises(error) as refused:
        mine_hard(object(), root, count=2, keep=1, size=SIZE, seed=SEED)
    assert words in str(refused.value)


def test_the_command_refuses_a_file_as_out_before_loading_the_model(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    _no_rendering(monkeypatch)
    assert main(["--out", str(out), "--count", "2", "--keep", "1", "--size", str(SIZE), "--seed", str(SEED)]) != 0
    err = capsys.readouterr().err
    assert f"{out} is a file; give a folder for the training root (--out)" in err and "Traceback" not in err
    assert out.read_text() == "not a folder"
