"""A dataset's image holds its whole lattice: a sheared grid (``--style random``) used to be sized as
if unsheared, and the marks of its outer columns fell off the image, neither drawn nor listed missing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from am.imageio import read_image
from am.synth.dataset import _plan_group, dataset_layout, demo_style, write_dataset
from am.synth.lattice import Lattice


def test_every_mark_of_a_sheared_random_dataset_lies_on_its_image(tmp_path: Path) -> None:
    # Seed 188 draws a shear of -0.05 on a narrow grid: 16 marks of its outer columns fell off the
    # image (listed missing, though the style drops only 2 % of marks).
    write_dataset(tmp_path, rows=120, cols=4, seed=188, realistic=False)
    record = json.loads((tmp_path / "truth" / "group01" / "lattice.json").read_text())
    assert abs(record["shear"]) > 0.04
    lattice = Lattice(rows=120, cols=4, pitch_x=record["pitch_x"], pitch_y=record["pitch_y"],
                      angle_deg=record["angle_deg"], origin_x=record["origin_x"], origin_y=record["origin_y"],
                      shear=record["shear"])
    nodes = lattice.nodes()
    margin = 2 * max(record["pitch_x"], record["pitch_y"])  # what dataset_layout leaves around the lattice
    assert nodes.min() >= margin - 1e-6
    assert np.all(nodes.max(axis=0) <= np.array([record["width"], record["height"]]) - margin + 1e-6)
    ids = read_image(tmp_path / "truth" / "group01" / "ids.png")
    present = set(np.unique(ids).tolist()) - {0}
    missing = set(record["missing_ids"])
    assert not present & missing and present | missing == set(range(1, 120 * 4 + 1))
    assert len(missing) < 16


def test_the_image_holds_every_node_of_a_sheared_lattice_with_its_margin() -> None:
    style = replace(demo_style(np.random.default_rng(0), pitch=30.0), shear=0.06, angle_deg=2.0)
    lattice, width, height = dataset_layout(rows=60, cols=3, seed=0, style=style, margin=40.0)
    nodes = lattice.nodes()
    assert nodes.min() >= 40.0 - 1e-6
    assert np.all(nodes.max(axis=0) <= np.array([width, height]) - 40.0 + 1e-6)


def test_an_unsheared_layout_keeps_its_size() -> None:
    # The sample dataset of `make run` (realistic style, no shear) keeps the image it always had.
    plan = _plan_group(0, rows=50, cols=50, seed=7, pitch=None, realistic=True, uneven_rows=False)
    assert (plan.width, plan.height) == (1995, 1995) and plan.style.shear == 0.0
    style = replace(demo_style(np.random.default_rng(1), pitch=30.0), angle_deg=3.0)
    _, width, height = dataset_layout(rows=10, cols=20, seed=0, style=style, margin=60.0)
    theta = np.radians(3.0)
    assert width == int(np.ceil(19 * 30 * np.cos(theta) + 9 * 30 * np.sin(theta) + 120))
    assert height == int(np.ceil(19 * 30 * np.sin(theta) + 9 * 30 * np.cos(theta) + 120))
