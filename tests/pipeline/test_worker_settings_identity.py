"""The workers' own mask settings (AM_POSTPROCESS, AM_PRECISION, AM_COMPILE) decide reuse like the model does.

Local workers inherit the orchestrator's environment, so ``AM_POSTPROCESS=off python -m
am.pipeline DS`` makes thresholded masks. A rerun without it must make them again, not keep
them because nothing recorded how they were made.
"""

from __future__ import annotations

import json

import pytest
from faults.harness import make_dataset

from am.dataset import DatasetLayout
from am.errors import ConfigError
from am.prepare import (
    DEFAULT_WORKER_MASK_SETTINGS,
    MASK_RECIPE,
    prepare_group,
    reuse_group,
    worker_mask_settings,
)
from am.settings import Settings

SETTINGS = Settings(tile_size=64, tile_overlap=16)


def test_the_local_workers_settings_come_from_the_environment_they_inherit():
    assert worker_mask_settings({}, backend="local") == DEFAULT_WORKER_MASK_SETTINGS == {
        "postprocess": "on", "precision": "auto", "compile": "auto"}
    env = {"AM_POSTPROCESS": " OFF ", "AM_PRECISION": "fp32", "AM_COMPILE": ""}
    assert worker_mask_settings(env, backend="local") == {"postprocess": "off", "precision": "fp32",
                                                          "compile": "auto"}
    # ECS tasks never see this shell's variables: they run with their task definition's (the defaults).
    assert worker_mask_settings(env, backend="aws") == DEFAULT_WORKER_MASK_SETTINGS


def test_a_bad_worker_setting_is_refused_before_any_worker_starts():
    with pytest.raises(ConfigError, match=r"AM_POSTPROCESS = 'maybe' must be one of on, off"):
        worker_mask_settings({"AM_POSTPROCESS": "maybe"}, backend="local")


@pytest.mark.parametrize("variable,value,words", [
    ("AM_MAX_BATCH_S", "abc", "environment variable AM_MAX_BATCH_S = 'abc' is not a valid number"),
    ("AM_MAX_BATCH_S", "0", "AM_MAX_BATCH_S = 0.0 must be a finite number of seconds > 0"),
])
def test_any_other_variable_the_local_workers_inherit_is_checked_as_they_check_it(variable, value, words):
    """AM_MAX_BATCH_S=abc made every worker exit 2 some 15 s into the job, with a hint to rerun."""
    with pytest.raises(ConfigError) as caught:
        worker_mask_settings({variable: value}, backend="local")
    assert words in str(caught.value) and "the local workers read it from this command's environment" in str(
        caught.value)
    assert worker_mask_settings({variable: value}, backend="aws") == DEFAULT_WORKER_MASK_SETTINGS


def test_variables_the_backend_gives_the_workers_itself_are_not_checked():
    """Never reaching a worker, a user's AM_STOP_TIMEOUT_S or AM_THREADS is warned of, not refused."""
    replaced = {"AM_STOP_TIMEOUT_S": "soon", "AM_THREADS": "100000", "AM_WORKER_ID": "", "AM_QUEUE_URL": ""}
    assert worker_mask_settings(replaced, backend="local") == DEFAULT_WORKER_MASK_SETTINGS


@pytest.mark.parametrize("variable,value", [("AM_POSTPROCESS", "off"), ("AM_PRECISION", "bf16"),
                                            ("AM_COMPILE", "on")])
def test_masks_made_with_other_worker_settings_are_not_reused(tmp_path, variable, value):
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": (150, 150)}))
    changed = worker_mask_settings({variable: value}, backend="local")
    prepare_group(layout, "g1", settings=SETTINGS, model_id="m", worker=changed)
    recorded = json.loads(layout.tile_plan("g1").read_text())["identity"]["worker"]
    assert recorded == changed

    assert reuse_group(layout, "g1", settings=SETTINGS, model_id="m", worker=changed) is not None
    assert reuse_group(layout, "g1", settings=SETTINGS, model_id="m",
                       worker=worker_mask_settings({}, backend="local")) is None


def test_a_plan_of_an_older_release_is_segmented_again_and_the_log_says_why(tmp_path, caplog):
    # Releases before the recipe was recorded made masks otherwise (the worker settings were not
    # recorded either, nor were images too thin for the model refused): none of them is kept.
    layout = DatasetLayout(make_dataset(tmp_path / "ds", {"g1": (150, 150)}))
    prepare_group(layout, "g1", settings=SETTINGS, model_id="m")
    assert reuse_group(layout, "g1", settings=SETTINGS, model_id="m") is not None
    meta = json.loads(layout.tile_plan("g1").read_text())
    assert meta["identity"]["recipe"] == MASK_RECIPE
    for older in ({"recipe": MASK_RECIPE - 1}, {"recipe": None, "worker": None}):
        identity = {**meta["identity"], **older}
        layout.tile_plan("g1").write_text(json.dumps({**meta, "identity": {k: v for k, v in identity.items()
                                                                           if v is not None}}))
        caplog.clear()
        with caplog.at_level("INFO", logger="am.prepare"):
            assert reuse_group(layout, "g1", settings=SETTINGS, model_id="m") is None
        said = older["recipe"] if older["recipe"] is not None else "unrecorded"
        assert f"another release of am-segm (mask recipe {said}, now {MASK_RECIPE})" in caplog.text
