"""How registration copes with debris beside the grid: shifted ids, wrong grid shapes, and warnings.

Debris that happens to sit near the nodes of a lattice row beyond the marks can pass for a
sparse edge row of marks. Each case draws a 7 x 40 grid of discs or crescents with 10, 40 or
120 pieces of debris (3 seeds, 3 angles), with ``--margin`` pitches of empty image around the
marks, and registers it without a grid shape, with the right one, or with one column too many::

    python benchmarks/edge_debris_bench.py --margin 6
    python benchmarks/edge_debris_bench.py --margin 2 --grid wide

A case "shifted" when most marks got another (row, column) than their true one; a warning
"named" it when it says an edge row holds only a few marks, or that marks beyond the grid or an
empty edge row were left without id.
"""

from __future__ import annotations

import argparse
import collections
import itertools

import numpy as np

from am.errors import RegistrationError
from am.register import register_mask
from am.register.testing import draw_lattice_mask
from am.synth.lattice import Lattice

ROWS, COLS, PITCH = 7, 40, 30.0
GRIDS = {"estimated": (None, None), "exact": (ROWS, COLS), "wide": (ROWS, COLS + 1)}
EDGE_WARNINGS = ("holds only", "beyond the", "is empty is ambiguous", "was left empty")


def draw(*, shape: str, debris: int, seed: int, angle: float, margin: float):
    probe = Lattice(ROWS, COLS, PITCH, PITCH, angle, 0.0, 0.0, 0.0).nodes()
    width, height = (np.ptp(probe, axis=0) + margin * PITCH).astype(int)
    lattice = Lattice.centred(rows=ROWS, cols=COLS, width=width, height=height, pitch_x=PITCH, angle_deg=angle)
    return draw_lattice_mask(lattice, width=width, height=height, radius=0.27 * PITCH, shape=shape, debris=debris,
                             rng=np.random.default_rng(seed))


def shift(truth: np.ndarray, ids: np.ndarray, cols: int) -> tuple[int, int]:
    """The most common (row, column) offset of the marks' given ids from their true ones."""
    marks = (truth > 0) & (ids > 0)
    given, true = ids[marks].astype(int) - 1, truth[marks].astype(int) - 1
    offsets = zip((given // cols - true // COLS).tolist(), (given % cols - true % COLS).tolist(), strict=True)
    return collections.Counter(offsets).most_common(1)[0][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margin", type=float, default=6.0, help="pitches of empty image around the marks")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="estimated",
                        help="registered without a shape, with the right one, or one column too many")
    args = parser.parse_args()
    rows, cols = GRIDS[args.grid]
    tally: collections.Counter[str] = collections.Counter()
    for shape, debris, seed, angle in itertools.product(("disc", "crescent"), (10, 40, 120), range(3),
                                                        (-4.0, 0.0, 3.0)):
        drawn = draw(shape=shape, debris=debris, seed=seed, angle=angle, margin=args.margin)
        tally["cases"] += 1
        try:
            reg = register_mask(drawn.mask, rows=rows, cols=cols)
        except RegistrationError:
            tally["refused"] += 1
            continue
        named = any(word in w for w in reg.warnings for word in EDGE_WARNINGS)
        sparse_named = any("holds only" in w for w in reg.warnings)
        shifted = shift(drawn.truth, reg.ids, reg.cols) != (0, 0)
        wrong_shape = (reg.rows, reg.cols) != (ROWS, COLS) and args.grid == "estimated"
        tally["shifted"] += shifted
        tally["shifted, warned"] += shifted and named
        tally["wrong shape"] += wrong_shape
        tally["wrong shape, sparse edge named"] += wrong_shape and sparse_named
        tally["right, yet sparse edge named"] += not shifted and not wrong_shape and sparse_named
    print(f"7 x 40 grids, {args.margin:g} pitches of margin, grid {args.grid}")
    for key in ("cases", "refused", "shifted", "shifted, warned", "wrong shape", "wrong shape, sparse edge named",
                "right, yet sparse edge named"):
        print(f"  {key:32s} {tally[key]}")


if __name__ == "__main__":
    main()
