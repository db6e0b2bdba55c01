"""A tile plan (``tiles/<group>/meta.json``) that parses as JSON but cannot be used as written.

A hand edit or a disk fault can leave a plan whose tiles no longer cover the image, or a key
missing. Every rerun then failed: with "not a valid tile plan ...; plan the tiles again", which no
command does and which did not name the file, or with a KeyError traceback. Such a plan is now
treated as an unreadable one: warned of by name, and the group is cut again.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from faults.harness import make_dataset

from am.dataset import DatasetLayout
from am.imageio import write_png
from am.prepare import prepare_group, reuse_group, reuse_or_recut_group
from am.settings import Settings

SETTINGS = Settings(tile_size=64, tile_overlap=16)
MODEL = "m"


def _own_off_by_one(meta: dict) -> None:
    meta["plan"]["tiles"][0]["own"][1] += 1


def _no_height(meta: dict) -> None:
    del meta["source_height"]


def _no_identity(meta: dict) -> None:
    meta["identity"] = "settings"


def _no_plan(meta: dict) -> None:
    del meta["plan"]


DAMAGE = {
    "a tile's own region off by one": (_own_off_by_one, "not a valid tile plan"),
    "no source_height": (_no_height, "source_height None is not a size in pixels"),
    "settings not a mapping": (_no_identity, "no settings recorded"),
    "no plan": (_no_plan, "not a valid tile plan"),
}


def _finished_group(tmp_path) -> tuple[DatasetLayout, int]:
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": (150, 170)}))
    prepared = prepare_group(layout, "g1", settings=SETTINGS, model_id=MODEL)
    for index in prepared.pending:
        write_png(layout.tile_mask("g1", index), np.zeros((SETTINGS.tile_size,) * 2, np.uint8))
    return layout, prepared.n_tiles


@pytest.mark.parametrize("complete", [True, False], ids=["finished run", "interrupted run"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_plan_is_named_and_the_group_cut_again(damage, complete, tmp_path, caplog):
    layout, n_tiles = _finished_group(tmp_path)
    path = layout.tile_plan("g1")
    meta = json.loads(path.read_text())
    damage_it, said = DAMAGE[damage]
    damage_it(meta)
    meta["complete"] = complete
    path.write_text(json.dumps(meta))

    with caplog.at_level(logging.WARNING, logger="am.prepare"):
        assert reuse_group(layout, "g1", settings=SETTINGS, model_id=MODEL) is None
        assert reuse_or_recut_group(layout, "g1", settings=SETTINGS, model_id=MODEL) is None
    assert f"ignoring damaged tile plan {path} (" in caplog.text and said in caplog.text
    assert "tiles will be made again" in caplog.text

    # Cut again: a usable plan is written, and the next run reuses it.
    again = prepare_group(layout, "g1", settings=SETTINGS, model_id=MODEL)
    assert again.n_tiles == n_tiles
    rewritten = json.loads(path.read_text())
    assert rewritten["complete"] and rewritten["source_height"] == 150 and isinstance(rewritten["identity"], dict)
    assert reuse_group(layout, "g1", settings=SETTINGS, model_id=MODEL) is not None
