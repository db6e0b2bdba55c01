"""The side-by-side table of model_quality.py's JSON figures shows every model's figures in its column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from am.evaluate.heldout import HELD_OUT_SEED
from am.evaluate.metrics import Scores
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]


def figures(encoder: str, dice: float, *, real: bool) -> dict:
    out = {"model": f"{encoder}.pt", "encoder": encoder, "precision": "fp32", "tta": "off",
           "synthetic": {"images": 40, "dice_pooled": dice, "f1": dice - 0.05,
                         "lost": {"missed": 12, "merged": 3, "split": 1}}}
    if real:
        crops = {f"crop{n}": {"dice": dice - n / 100, "f1": 0.5 + n / 10} for n in (1, 2, 3)}
        crops["crop1"]["blob_false_marks"] = 0
        out["real"] = {"crops": crops, "tiles": {"tile_a_512": {"marks": 23, "specks": 1},
                                                 "tile_b_512": {"marks": 66, "specks": 6}}}
    return out


def test_table_has_a_column_per_model_and_dashes_for_figures_a_file_lacks(tmp_path, capsys):
    compare = load_script(REPO / "benchmarks" / "compare_quality.py")
    (tmp_path / "a.json").write_text(json.dumps(figures("small", 0.918, real=True)))
    (tmp_path / "b.json").write_text(json.dumps(figures("big", 0.95, real=False)))
    assert compare.main([f"shipped={tmp_path / 'a.json'}", f"big={tmp_path / 'b.json'}"]) == 0
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ")[1:]
            for line in capsys.readouterr().out.splitlines()[2:] if line.startswith("|")}
    assert rows["encoder"] == ["small", "big"]
    assert rows["synthetic held-out Dice (target >= 0.95)"] == ["0.9180", "0.9500"]
    assert rows["synthetic marks missed / merged / split"] == ["12 / 3 / 1", "12 / 3 / 1"]
    assert rows["crop2 Dice (target >= 0.85)"] == ["0.8980", "-"]
    assert rows["crop1 / crop2 / crop3 object F1"] == ["0.600 / 0.700 / 0.800", "-"]
    assert rows["tile_b marks / specks"] == ["66 / 6", "-"]
    assert len(rows) == len(compare.ROWS)


def test_a_model_without_name_or_a_file_that_is_not_figures_is_refused(tmp_path, capsys):
    compare = load_script(REPO / "benchmarks" / "compare_quality.py")
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(tmp_path / "a.json")])
    assert exit_info.value.code == 2 and "give NAME=PATH" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{not json")
    for path in (tmp_path / "broken.json", tmp_path / "missing.json"):
        with pytest.raises(SystemExit) as exit_info:
            compare.main([f"x={path}"])
        assert str(path) in str(exit_info.value.code) and "model_quality.py --json" in str(exit_info.value.code)


def with_changes(base: dict, **changes: float) -> dict:
    """A copy of ``base`` with figures changed by the given amounts (keys as in compare_quality.JUDGED)."""
    out = json.loads(json.dumps(base))
    paths = {"dice": ("synthetic", "dice_pooled"), "f1": ("synthetic", "f1")}
    for key, delta in changes.items():
        if key in paths:
            group, field = paths[key]
            out[group][field] += delta
        elif key == "blob":
            out["real"]["crops"]["crop1"]["blob_false_marks"] += int(delta)
        elif key.startswith("tile_"):
            out["real"]["tiles"][f"{key}_512"]["marks"] += int(delta)
        else:
            out["real"]["crops"][key]["dice"] += delta
    return out


@pytest.mark.parametrize(("changes", "better", "worse", "outcome"), [
    ({"dice": 0.01, "f1": 0.02, "crop2": 0.03}, ["synthetic Dice (+0.0100)", "synthetic object F1 (+0.0200)",
                                                 "crop2 Dice (+0.0300)"], [], "It could replace shipped"),
    ({"f1": 0.02, "crop3": -0.004}, ["synthetic object F1 (+0.0200)"], ["crop3 Dice (-0.0040)"], "Shipped stays"),
    ({"f1": 0.02, "blob": 1}, ["synthetic object F1 (+0.0200)"], ["crop1 false marks on the blob (+1)"],
     "Shipped stays"),
    ({"dice": 0.0015, "crop1": -0.0015}, [], [], "Shipped stays"),
])
def test_each_model_is_judged_against_the_first_on_the_targets_figures(tmp_path, capsys, changes, better, worse,
                                                                        outcome):
    compare = load_script(REPO / "benchmarks" / "compare_quality.py")
    shipped = figures("small", 0.918, real=True)
    (tmp_path / "a.json").write_text(json.dumps(shipped))
    (tmp_path / "b.json").write_text(json.dumps(with_changes(shipped, **changes)))
    assert compare.main([f"shipped={tmp_path / 'a.json'}", f"new={tmp_path / 'b.json'}"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("- new against shipped: ")
    assert f"better on {', '.join(better) or 'nothing'};" in line
    assert f"worse on {', '.join(worse) or 'nothing'} " in line
    assert line.endswith(".") and outcome in line


def test_a_model_measured_without_the_real_samples_cannot_be_judged(tmp_path, capsys):
    compare = load_script(REPO / "benchmarks" / "compare_quality.py")
    (tmp_path / "a.json").write_text(json.dumps(figures("small", 0.918, real=True)))
    (tmp_path / "b.json").write_text(json.dumps(figures("big", 0.95, real=False)))
    assert compare.main([f"shipped={tmp_path / 'a.json'}", f"big={tmp_path / 'b.json'}"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert "better on synthetic Dice (+0.0320), synthetic object F1 (+0.0320)" in line
    assert "not compared (a file lacks them): crop1 Dice, crop2 Dice, crop3 Dice, crop1 false marks on the blob" in line
    assert "Cannot tell whether it could replace shipped." in line


def with_images(figures_: dict, matched: list[int]) -> dict:
    """``figures_`` with held-out counts image by image (100 true and 100 predicted marks each) and
    the pooled figures they give, as model_quality.py writes them."""
    out = json.loads(json.dumps(figures_))
    rows = [[800, 1000, 1000, 100, 100, m] for m in matched]
    pooled = Scores(*(sum(column) for column in zip(*rows, strict=True)))
    out["synthetic"].update(seed=HELD_OUT_SEED, per_image=rows, dice_pooled=pooled.dice, f1=pooled.f1)
    return out


@pytest.mark.parametrize(("candidate", "better", "outcome"), [
    # Five more marks found on every image: a gain whatever images are drawn.
    ([85] * 40, "better on synthetic object F1 (+0.0500, 95 % interval +0.0500 to +0.0500);", "It could replace"),
    # Twenty more on one image of forty: the pooled F1 rises by 0.005, more than TOLERANCE, but the draws
    # without that image show no change, so it is not counted.
    ([80] * 39 + [100], "better on nothing;", "Shipped stays"),
])
def test_synthetic_figures_are_judged_by_a_paired_bootstrap_over_the_images(tmp_path, capsys, candidate, better,
                                                                             outcome):
    compare = load_script(REPO / "benchmarks" / "compare_quality.py")
    shipped = with_images(figures("small", 0.918, real=True), [80] * 40)
    (tmp_path / "a.json").write_text(json.dumps(shipped))
    (tmp_path / "b.json").write_text(json.dumps(with_images(shipped, candidate)))
    assert compare.main([f"shipped={tmp_path / 'a.json'}", f"new={tmp_path / 'b.json'}"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert better in line and "worse on nothing" in line and outcome in line
    # What the draws cannot tell apart is shown with its interval rather than left out.
    undecided = line.split("within the spread of the images drawn: ")[1]
    assert undecided.startswith("synthetic Dice (+0.0000, 95 % interval +0.0000 to +0.0000)")
    assert ("synthetic object F1 (+0.0050, 95 % interval +0.0000 to " in undecided) == (better == "better on nothing;")
    assert "a paired bootstrap over the 40 held-out images puts the change's 95 % interval on one side of zero" in line


def test_files_of_other_held_out_images_fall_back_to_the_tolerance(tmp_path, capsys):
    compare = load_script(REPO / "benchmarks" / "compare_quality.py")
    shipped = with_images(figures("small", 0.918, real=True), [80] * 40)
    other = with_images(shipped, [80] * 39 + [100])
    other["synthetic"]["seed"] = HELD_OUT_SEED + 1
    (tmp_path / "a.json").write_text(json.dumps(shipped))
    (tmp_path / "b.json").write_text(json.dumps(other))
    assert compare.main([f"shipped={tmp_path / 'a.json'}", f"new={tmp_path / 'b.json'}"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert "better on synthetic object F1 (+0.0050)" in line and "(within 0.002 counts as even)" in line


def test_a_change_in_the_marks_found_on_the_real_tiles_sends_the_candidate_to_its_overlays(tmp_path, capsys):
    compare = load_script(REPO / "benchmarks" / "compare_quality.py")
    shipped = figures("small", 0.918, real=True)
    (tmp_path / "a.json").write_text(json.dumps(shipped))
    # Better on a judged figure and worse on none, but three of tile_a's 23 marks are gone (joined in pairs).
    (tmp_path / "b.json").write_text(json.dumps(with_changes(shipped, crop3=0.006, tile_a=-3)))
    (tmp_path / "c.json").write_text(json.dumps(with_changes(shipped, crop3=0.006)))
    assert compare.main([f"shipped={tmp_path / 'a.json'}", f"joined={tmp_path / 'b.json'}",
                         f"same={tmp_path / 'c.json'}"]) == 0
    joined, same = capsys.readouterr().out.splitlines()[-2:]
    assert "marks found on the real tiles changed (tile_a 23 -> 20): marks joined, lost or split" in joined
    assert joined.endswith("It could replace shipped only if the real tiles' overlays (model_quality.py "
                           "--overlays) show every mark outlined on its own.")
    assert "real tiles changed" not in same and same.endswith("measure it with model_quality.py on the CPU "
                                                              "before shipping it.")
