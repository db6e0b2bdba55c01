"""Fuzz grid registration on synthetic lattice masks with known ids: how many grids are numbered wrong, and how.

``register_bench.py`` measures accuracy, time and memory on a few 50 x 50 scenarios; this one draws
hundreds of small random grids per family, the shapes where registration has least to go on, and
sorts each outcome: every mark right (``ok``), whole rows a column off (``column off``), a row off,
marks left without an id, or a refusal (an error, counted apart where it says the marks fill a
column too many, which is the same fault caught). Families:

- ``uneven_small``: 3-5 rows 0.65-1.3 pitches apart, each slid along itself by up to 0.2 of a
  column (as ``am.synth dataset --uneven-rows`` draws them), 5-40 columns;
- ``uneven_small_shear``: the same on a lattice sheared by up to 0.1 column per row;
- ``uneven_small_slide25``: the same with slides of up to 0.25 of a column;
- ``large_uneven``: 6-30 such rows; ``even``: 3-50 evenly spaced rows.

Every grid: pitch 20-60 px, turned up to 10 degrees, marks 0.15-0.25 pitch across (discs, ellipses,
crescents, "C"s), 0-10 % of marks missing, debris up to a tenth of the nodes; registered with the
right rows and cols. The figures in README ("Registration to the acquisition grid") come from::

    python benchmarks/register_fuzz.py uneven_small --count 1300
    python benchmarks/register_fuzz.py large_uneven --count 600 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from tqdm import tqdm

from am.errors import AmError
from am.register import register_mask
from am.register.testing import FUZZ_FAMILIES, draw_fuzz_case, wrong_ids

# What a row numbered a column too far right or left is refused with, when registration sees it.
COLUMN_TOO_MANY = "lattice columns"


def run_case(case: tuple[str, int]) -> dict[str, Any]:
    """Register one grid and sort the outcome (see the module docstring)."""
    family, seed = case
    drawn, rows, cols, out = draw_fuzz_case(family, seed)
    try:
        registration = register_mask(drawn.mask, rows=rows, cols=cols)
    except AmError as exc:
        out["result"] = "refused: a column too many" if COLUMN_TOO_MANY in str(exc) else "refused: other"
        out["error"] = str(exc)[:160]
        return out
    wrong = wrong_ids(drawn, registration.ids)
    out["wrong"] = int(wrong.size)
    out["warnings"] = len(registration.warnings)
    if not wrong.size:
        out["result"] = "ok"
        return out
    marked = drawn.truth > 0
    truth, got = drawn.truth[marked].astype(np.int64), registration.ids[marked].astype(np.int64)
    row_steps, col_steps = [], []
    for true_id in wrong:
        values, counts = np.unique(got[truth == true_id], return_counts=True)
        given = int(values[np.argmax(counts)])
        if given:
            true_row, true_col = divmod(int(true_id) - 1, cols)
            given_row, given_col = divmod(given - 1, cols)
            row_steps.append(given_row - true_row)
            col_steps.append(given_col - true_col)
    if not row_steps:
        out["result"] = "marks without id"
    elif not any(row_steps):
        out["result"] = "column off"
    elif not any(col_steps):
        out["result"] = "row off"
    else:
        out["result"] = "mixed"
    return out


def _quiet() -> None:
    """In each fuzzing process: registration warns of every odd grid, and the counts already say it."""
    logging.disable(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=FUZZ_FAMILIES,
                        help="the kind of grid drawn (the docstring of benchmarks/register_fuzz.py says how each is)")
    parser.add_argument("--count", type=int, default=300, help="grids to draw (default 300)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--json", action="store_true", help="one JSON line per grid that is not ok, then the counts")
    args = parser.parse_args(argv)
    if args.count < 1 or args.jobs < 1:
        parser.error("--count and --jobs must be >= 1")
    cases = [(args.family, seed) for seed in range(args.start, args.start + args.count)]
    with ProcessPoolExecutor(args.jobs, initializer=_quiet) as pool:
        results = list(tqdm(pool.map(run_case, cases, chunksize=4), total=len(cases), desc=args.family, unit="grid"))
    counts = Counter(r["result"] for r in results)
    for result in results:
        if result["result"] != "ok":
            print(json.dumps(result) if args.json else
                  f"seed {result['seed']}: {result['result']} ({result['rows']} x {result['cols']})")
    summary = {"family": args.family, "grids": len(results), "seeds": [args.start, args.start + args.count - 1],
               **dict(sorted(counts.items()))}
    print(json.dumps(summary) if args.json else
          f"{args.family}, seeds {args.start}-{args.start + args.count - 1}: "
          + ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda item: -item[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
