"""Registration inside ``python -m am.pipeline``, as a user runs it: every group is registered
even when one fails, the grid is estimated without ``--rows/--cols``, the summary counts warnings,
and a model the workers could never read is refused before anything starts.

One real run segments a two-group synthetic dataset with the shipped model; each test then works
on a copy of it, where every mask is reused and no worker starts, so only registration runs again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from am.errors import ConfigError
from am.model_source import resolve_model
from am.settings import Settings
from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]
# Sorted first, so that a pipeline stopping at the first failure would never reach GOOD.
SMALL, GOOD = "a_small", "b_grid"
# GOOD holds an 8 x 8 grid: 10 x 10 fits it with two empty edge rows and columns (warnings); SMALL holds
# 3 x 3 marks, far too few for 100 positions (with what the model adds on its edges: 15 components, where
# 21 would pass the count), so its registration fails whatever the model makes of it.
GIVEN = ["--rows", "10", "--cols", "10"]


def _environment(cache: Path) -> dict[str, str]:
    return clean_env(XDG_CACHE_HOME=str(cache), AM_IDLE_EXIT_S="30", PYTHONPATH=str(REPO))


def _pipeline(dataset: Path, *args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "am.pipeline", str(dataset), *args, "--workers", "1",
                           "--no-progress"], env=_environment(cache), capture_output=True, text=True, timeout=300,
                          cwd=REPO)


@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both groups segmented once by the shipped model, not registered."""
    from am.synth.dataset import write_dataset

    root = tmp_path_factory.mktemp("register-groups")
    dataset = root / "dataset"
    for name, rows, cols, seed in ((SMALL, 3, 3, 1), (GOOD, 8, 8, 2)):
        write_dataset(root / name, rows=rows, cols=cols, seed=seed)
        (dataset / "source").mkdir(parents=True, exist_ok=True)
        shutil.move(root / name / "source" / "group01", dataset / "source" / name)
    done = _pipeline(dataset, "--no-register", cache=root / "cache")
    assert done.returncode == 0, done.stderr[-4000:]
    return dataset


@pytest.fixture
def dataset(segmented: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "dataset"
    shutil.copytree(segmented, copy)
    return copy


def _registration(dataset: Path, group: str) -> dict:
    return json.loads((dataset / "am_coords" / group / "registration.json").read_text())


def test_a_group_that_fails_to_register_is_named_and_the_others_are_still_registered(dataset, tmp_path):
    done = _pipeline(dataset, *GIVEN, cache=tmp_path / "cache")
    assert done.returncode == 1, done.stderr[-4000:]
    assert "nothing to segment" in done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 2, done.stderr
    assert f"group {SMALL}: registration failed: the grid was given 10 x 10" in errors[0]
    assert f"registration failed for 1 of 2 group(s): {SMALL}" in errors[1]
    # What to do next: look at the overlay, fix the grid, or rescale marks the model was not trained on.
    assert "tiles_stitched/<group>/overlay.png" in errors[1] and "--scale" in errors[1]
    # The group after the failed one is registered, and both outcomes are in the summary.
    assert (dataset / "am_coords" / GOOD / "am_coordinates.png").is_file()
    assert not (dataset / "am_coords" / SMALL).exists()
    assert f"registration {SMALL}: FAILED: the grid was given 10 x 10" in done.stdout
    assert f"registration {GOOD}: " in done.stdout and "on a 10x10 grid" in done.stdout
    for group in (SMALL, GOOD):
        assert (dataset / "tiles_stitched" / group / "mask.tiff").is_file()


def test_a_disk_error_while_registering_a_group_fails_that_group_alone(monkeypatch, tmp_path, caplog):
    # A full disk (or a read-only folder) met while writing one group's ids: that group fails with the
    # file named, the next is still registered, as with any other failure of one group.
    import errno
    import logging

    import am.register
    from am.errors import InputError
    from am.orchestrator import PipelineSummary, _register

    registered = []

    def register_group(dataset, group, *, rows, cols):
        if group == SMALL:
            raise OSError(errno.ENOSPC, "No space left on device", str(dataset / "am_coords" / group / "ids.png"))
        registered.append(group)
        raise InputError("the second group was reached")

    monkeypatch.setattr(am.register, "register_group", register_group)
    summary = PipelineSummary(groups=[SMALL, GOOD])
    with caplog.at_level(logging.ERROR):
        _register(tmp_path, [SMALL, GOOD], rows=None, cols=None, summary=summary)
    assert registered == [GOOD] and summary.registration_failed == [SMALL, GOOD]
    assert summary.registered[SMALL].startswith(f"FAILED: cannot use {tmp_path / 'am_coords' / SMALL / 'ids.png'}: "
                                                "No space left on device (ENOSPC)")
    assert f"group {SMALL}: registration failed: cannot use" in caplog.text


def test_the_summary_counts_the_registration_warnings(dataset, tmp_path):
    done = _pipeline(dataset, GOOD, *GIVEN, cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-4000:]
    warnings = _registration(dataset, GOOD)["warnings"]
    assert any("ambiguous" in w for w in warnings), warnings
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(f"registration {GOOD}:")]
    assert line.endswith(f", {len(warnings)} warning(s), in the log and in registration.json"), line


def test_without_rows_and_cols_every_group_is_registered_on_an_estimated_grid(dataset, tmp_path):
    done = _pipeline(dataset, cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "no --rows/--cols given: registering each group on a grid estimated from its marks" in done.stderr
    for group in (SMALL, GOOD):
        registration = _registration(dataset, group)
        assert registration["estimated_shape"] is True
        shape = f"{registration['rows']}x{registration['cols']}"
        (line,) = [line for line in done.stdout.splitlines() if line.startswith(f"registration {group}:")]
        assert f"on a {shape} grid estimated from the marks (no --rows/--cols)" in line, line


def test_no_register_still_stops_after_the_mask(dataset, tmp_path):
    done = _pipeline(dataset, "--no-register", cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-4000:]
    assert not (dataset / "am_coords").exists()
    assert "registration" not in done.stdout


def test_an_s3_model_on_the_local_backend_is_refused_before_anything_starts(small_dataset, tmp_path):
    done = _pipeline(small_dataset, "--model", "s3://bucket/models/m.pt", "--no-register", cache=tmp_path / "cache")
    assert done.returncode == 1, done.stderr[-4000:]
    assert "s3://bucket/models/m.pt" in done.stderr and "use --backend aws" in done.stderr
    assert "endpoint listening" not in done.stderr and "started worker" not in done.stderr
    assert not (small_dataset / "tiles").exists()


def test_an_s3_model_is_refused_on_the_local_backend(tmp_path):
    with pytest.raises(ConfigError, match=r"s3://b/m\.pt is an S3 URI.*embedded S3 endpoint is empty.*--backend aws"):
        resolve_model(Settings(backend="local", model="s3://b/m.pt"), cache_dir=tmp_path)
    # With an endpoint of the operator's own, the embedded one's emptiness is not the reason.
    with pytest.raises(ConfigError, match=r"do not read \(they load a local checkpoint file\)"):
        resolve_model(Settings(backend="local", model="s3://b/m.pt", endpoint_url="http://127.0.0.1:4566"),
                      cache_dir=tmp_path)


def test_a_model_folder_is_called_a_folder_and_its_checkpoints_are_named(tmp_path, tiny_model):
    folder = tmp_path / "models"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"models is a folder, not a checkpoint file.*holds no \.pt file"):
        resolve_model(Settings(model=str(folder)), cache_dir=tmp_path / "cache")
    shutil.copyfile(tiny_model, folder / "mine.pt")
    with pytest.raises(ConfigError, match=r"is a folder.*pass the \.pt file itself, e\.g\. --model .*mine\.pt"):
        resolve_model(Settings(model=str(folder)), cache_dir=tmp_path / "cache")


def test_a_model_path_that_is_not_utf8_is_refused_before_any_worker_starts(tmp_path, tiny_model):
    path = Path(os.fsdecode(bytes(tmp_path) + b"/mod\xe8le.pt"))
    shutil.copyfile(tiny_model, path)
    with pytest.raises(ConfigError, match=r"mod\\udce8le\.pt' is not valid UTF-8.*rename the file or its folder"):
        resolve_model(Settings(model=str(path)), cache_dir=tmp_path / "cache")
