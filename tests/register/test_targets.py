"""The accuracy targets of registration, on one seed of each benchmark scenario.

``python benchmarks/register_bench.py`` runs more seeds and the 10000 x 10000 timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from am.register import register_mask
from am.register.testing import id_accuracy
from tests.scripts import load_script

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "register_bench.py"


@pytest.fixture(scope="module")
def bench():
    yield load_script(BENCH)
    sys.modules.pop(BENCH.stem, None)


@pytest.mark.parametrize("scenario, seed, target", [("mild", 1, 0.999), ("hard", 2, 0.995), ("faults", 3, 0.995)])
def test_scenario_meets_its_target(bench, scenario, seed, target):
    drawn, rows, cols = bench.make_case(scenario, seed)
    reg = register_mask(drawn.mask, rows=rows, cols=cols)
    assert id_accuracy(drawn, reg.ids) >= target


def test_original_method_fails_where_a_row_is_missing(bench):
    drawn, rows, cols = bench.make_case("hard", 2)
    assert id_accuracy(drawn, bench.original_method(drawn.mask, rows=rows, cols=cols)) < 0.5
