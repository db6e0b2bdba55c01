"""Where an output would be made, and the refusals that follow from it, before any work starts."""

from __future__ import annotations

import pytest

from am.cli import output_problem
from am.files import check_can_replace, nearest_existing


def test_the_nearest_existing_folder_is_where_a_missing_output_is_made(tmp_path):
    (tmp_path / "a").mkdir()
    assert nearest_existing(tmp_path / "a") == tmp_path / "a"
    assert nearest_existing(tmp_path / "a" / "b" / "c.png") == tmp_path / "a"


def test_an_output_under_a_file_is_refused_by_the_file_it_meets(tmp_path):
    (tmp_path / "f").write_text("x")
    assert output_problem(tmp_path / "f" / "out.json", folder=False) == (
        f"{tmp_path / 'f'} is a file, so {tmp_path / 'f' / 'out.json'} cannot be made")
    assert output_problem(tmp_path / "f" / "deeper" / "run", folder=True) == (
        f"{tmp_path / 'f'} is a file, so {tmp_path / 'f' / 'deeper' / 'run'} cannot be made")
    with pytest.raises(NotADirectoryError, match=str(tmp_path / "f")):
        check_can_replace([tmp_path / "f" / "group"])


def test_writable_places_give_no_problem_and_leave_nothing_behind(tmp_path):
    (tmp_path / "out").mkdir()
    assert output_problem(tmp_path / "out", folder=True) is None
    assert output_problem(tmp_path / "new" / "run" / "metrics.json", folder=False) is None
    check_can_replace([tmp_path / "out" / "group", tmp_path / "new" / "group"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]


def test_a_folder_given_for_a_file_and_a_file_for_a_folder_are_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    assert "is a folder; give a file path" in output_problem(tmp_path / "d", folder=False)
    assert "is a file; give a folder path" in output_problem(tmp_path / "f", folder=True)
