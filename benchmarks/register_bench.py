"""Benchmark grid registration: id accuracy on synthetic lattices with known ids, time and memory.

Scenarios (several seeds each, 50 x 50 grids):

- ``mild``: angle up to 5 degrees, 5 % of marks missing (target: >= 99.9 % of marks get their id);
- ``hard``: angle up to 10 degrees, 15 % missing, one whole interior row and one interior column
  missing, an edge row with 80 % of its marks missing, debris, pitch 3 % different between axes
  (target: >= 99.5 %);
- ``faults``: thin crescents, marks split and merged by segmentation, a column clipped by the
  image edge (no target; what segmentation faults cost);
- ``uneven``: rows 0.65 to 1.3 pitches apart, each sliding along itself by up to 0.2 of a
  column, as on the real ``tile_b``; angle up to 5 degrees, 5 % missing, debris (target: as mild);
- ``pieces``: every mark drawn in two pieces (cut through its centre at a random angle), as the
  lobed craters of the real crop2 come out of the model; discs, ellipses or crescents, angle up
  to 5 degrees, 5 % missing, debris (target: as mild);
- ``large``: a 100 x 100 grid on a 10000 x 10000 mask, in a fresh process, for time and peak
  memory (target: < 20 s and < 4 GB); ``large+scratch`` the same with a 3 px scratch drawn
  corner to corner, one component touching a mark in every row that registration must cut apart.

Each scenario is also registered with the original am-segmentation's idea (rotation search on
the raster, then k-means of mark centroids into ``cols`` x-clusters and ``rows`` y-clusters),
scored the same way, for comparison. Accuracy counts a mark as right when most of its pixels
carry its true id::

    python benchmarks/register_bench.py            # table
    python benchmarks/register_bench.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from queue import Empty

import cv2
import numpy as np
from scipy.cluster.vq import kmeans2

from am.errors import AmError
from am.register import register_mask, write_outputs
from am.register.testing import LatticeMask, draw_lattice_mask, id_accuracy
from am.synth.lattice import Lattice


@dataclass
class Row:
    scenario: str
    method: str
    seed: int
    grid: str
    image: str
    angle_deg: float
    missing_pct: float
    accuracy_pct: float
    time_s: float
    # The process's peak RSS since it started, not this case's own: it only grows from row to row.
    # The large cases run in a fresh process each, so theirs is theirs alone.
    peak_rss_so_far_mib: float
    note: str = ""


def peak_rss_mib() -> float:
    """This process's peak RSS since it started, in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_case(scenario: str, seed: int) -> tuple[LatticeMask, int, int]:
    """Draw one synthetic mask of ``scenario``; returns it with the grid's rows and cols."""
    rng = np.random.default_rng(seed)
    rows = cols = 50
    pitch = float(rng.uniform(30, 44))
    radius = pitch * 0.26
    size = 2400
    shape = ("disc", "crescent", "c", "ellipse")[seed % 4]
    missing: set[int] = set()
    split: list[int] = []
    merged: list[tuple[int, int]] = []
    debris = 0
    pitch_x = pitch_y = pitch
    offset_x = 0.0
    if scenario == "mild":
        angle = float(rng.uniform(-5, 5))
        missing |= set((rng.choice(rows * cols, int(0.05 * rows * cols), replace=False) + 1).tolist())
    elif scenario == "hard":
        angle = float(rng.choice([-1, 1]) * rng.uniform(5, 10))
        if rng.random() < 0.5:
            pitch_y = pitch * 1.03
        else:
            pitch_x = pitch * 1.03
        missing |= set((rng.choice(rows * cols, int(0.15 * rows * cols), replace=False) + 1).tolist())
        gap_row, gap_col = int(rng.integers(2, rows - 2)), int(rng.integers(2, cols - 2))
        missing |= {gap_row * cols + c + 1 for c in range(cols)}
        missing |= {r * cols + gap_col + 1 for r in range(rows)}
        edge_row = 0 if rng.random() < 0.5 else rows - 1
        edge = [edge_row * cols + c + 1 for c in range(cols)]
        missing |= set(rng.choice(edge, int(0.8 * cols), replace=False).tolist())
        debris = 150
    elif scenario == "faults":
        angle = float(rng.uniform(-5, 5))
        shape = "thin_crescent"
        missing |= set((rng.choice(rows * cols, int(0.05 * rows * cols), replace=False) + 1).tolist())
        present = np.setdiff1d(np.arange(1, rows * cols + 1), sorted(missing))
        split = rng.choice(present, 20, replace=False).tolist()
        for a in rng.choice(present, 40, replace=False).tolist():
            b = a + 1
            if (a - 1) % cols < cols - 1 and b not in missing and a not in split and b not in split:
                merged.append((a, b))
        merged = merged[:20]
        # Push the grid right so that marks of the last column are cut by the image edge.
        probe = Lattice.centred(rows=rows, cols=cols, width=size, height=size, pitch_x=pitch, angle_deg=angle)
        offset_x = size - 1 + 0.3 * radius - float(probe.nodes()[:, 0].max())
    elif scenario == "uneven":
        angle = float(rng.uniform(-5, 5))
        missing |= set((rng.choice(rows * cols, int(0.05 * rows * cols), replace=False) + 1).tolist())
        debris = 50
    elif scenario == "pieces":
        # A "C" cut in two leaves pieces as far apart as its neighbours' pieces: no rule can pair them.
        shape = ("disc", "ellipse", "crescent")[seed % 3]
        angle = float(rng.uniform(-5, 5))
        missing |= set((rng.choice(rows * cols, int(0.05 * rows * cols), replace=False) + 1).tolist())
        split = np.setdiff1d(np.arange(1, rows * cols + 1), sorted(missing)).tolist()
        debris = 50
    else:
        raise ValueError(scenario)
    lattice = Lattice.centred(rows=rows, cols=cols, width=size, height=size, pitch_x=pitch_x, pitch_y=pitch_y,
                              angle_deg=angle, offset_x=offset_x)
    if scenario == "uneven":  # rows 0.65 to 1.3 pitches apart, each sliding by up to 0.2 of a column
        lattice = lattice.with_uneven_rows(rng)
    drawn = draw_lattice_mask(lattice, width=size, height=size, radius=radius, shape=shape, missing=missing,
                              split=split, merged=merged, debris=debris, rng=rng)
    return drawn, rows, cols


def original_method(mask: np.ndarray, *, rows: int, cols: int) -> np.ndarray:
    """The original's idea: find the grid angle by rotating the raster, then k-means on centroids.

    Rotates the mask about its centre (same canvas, so corners are clipped), finds contour
    centroids, clusters their x into ``cols`` and their y into ``rows`` groups, numbers the
    groups in order, and rotates the numbered components back.
    """
    h, w = mask.shape
    scale = min(1.0, 800 / max(h, w))
    small = cv2.resize(mask, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)

    def sharpness(image: np.ndarray, angle: float) -> float:
        sh, sw = image.shape
        m = cv2.getRotationMatrix2D((sw / 2, sh / 2), angle, 1.0)
        rotated = cv2.warpAffine(image, m, (sw, sh)).astype(np.float64)
        return float(np.sum(rotated.sum(axis=0) ** 2) + np.sum(rotated.sum(axis=1) ** 2))

    coarse = np.arange(-12.0, 12.01, 0.5)
    best = coarse[np.argmax([sharpness(small, a) for a in coarse])]
    fine = np.arange(best - 0.5, best + 0.51, 0.05)
    angle = float(fine[np.argmax([sharpness(mask, a) for a in fine])])
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    rotated = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST)
    n, labels = cv2.connectedComponents((rotated > 0).astype(np.uint8), connectivity=8)
    contours, _ = cv2.findContours((rotated > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    centres, lab = [], []
    for contour in contours:
        mom = cv2.moments(contour)
        if mom["m00"] <= 0:
            continue
        cx, cy = mom["m10"] / mom["m00"], mom["m01"] / mom["m00"]
        x, y = contour[0, 0]
        centres.append((cx, cy))
        lab.append(labels[y, x])
    centres_arr = np.array(centres)
    rng = np.random.default_rng(0)
    ids = np.zeros(n, np.uint16)
    if len(centres_arr) >= max(rows, cols):
        col_centre, col_of = kmeans2(centres_arr[:, 0], cols, minit="++", seed=rng)
        row_centre, row_of = kmeans2(centres_arr[:, 1], rows, minit="++", seed=rng)
        col_rank = np.argsort(np.argsort(col_centre))
        row_rank = np.argsort(np.argsort(row_centre))
        ids[np.array(lab)] = (row_rank[row_of] * cols + col_rank[col_of] + 1).astype(np.uint16)
    rotated_ids = ids[labels]
    back = cv2.invertAffineTransform(m)
    return cv2.warpAffine(rotated_ids, back, (w, h), flags=cv2.INTER_NEAREST)


def run_case(scenario: str, seed: int, *, original: bool) -> list[Row]:
    drawn, rows, cols = make_case(scenario, seed)
    lat = drawn.lattice
    missing_pct = 100.0 * (1 - drawn.present.size / (rows * cols))
    height, width = drawn.mask.shape
    common = dict(scenario=scenario, seed=seed, grid=f"{rows}x{cols}", image=f"{width}x{height}",
                  angle_deg=round(lat.angle_deg, 2), missing_pct=round(missing_pct, 1))
    out = []
    start = time.perf_counter()
    try:
        reg = register_mask(drawn.mask, rows=rows, cols=cols)
        accuracy, note = id_accuracy(drawn, reg.ids), ""
    except AmError as exc:
        accuracy, note = 0.0, str(exc)
    out.append(Row(method="am-segm", accuracy_pct=round(100 * accuracy, 3),
                   time_s=round(time.perf_counter() - start, 3), peak_rss_so_far_mib=round(peak_rss_mib()), note=note,
                   **common))
    if original:
        start = time.perf_counter()
        ids = original_method(drawn.mask, rows=rows, cols=cols)
        out.append(Row(method="original idea", accuracy_pct=round(100 * id_accuracy(drawn, ids), 3),
                       time_s=round(time.perf_counter() - start, 3), peak_rss_so_far_mib=round(peak_rss_mib()),
                       **common))
    return out


def _large_child(queue: multiprocessing.Queue, scratch: bool) -> None:
    rng = np.random.default_rng(100)
    size, rows, cols = 10000, 100, 100
    lattice = Lattice.centred(rows=rows, cols=cols, width=size, height=size, pitch_x=96.0, pitch_y=97.0,
                              angle_deg=4.0)
    missing = rng.choice(rows * cols, int(0.05 * rows * cols), replace=False) + 1
    drawn = draw_lattice_mask(lattice, width=size, height=size, radius=24, shape="crescent", missing=missing,
                              debris=300, rng=rng)
    if scratch:
        cv2.line(drawn.mask, (0, 5), (size - 1, size - 7), 255, 3)
    before = peak_rss_mib()
    start = time.perf_counter()
    reg = register_mask(drawn.mask, rows=rows, cols=cols)
    elapsed = time.perf_counter() - start
    registered_rss = peak_rss_mib()
    source = np.where(drawn.mask > 0, 200, 60).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_outputs(Path(tmp), reg, source=source)
        written = time.perf_counter() - start
    scenario = "large+scratch" if scratch else "large"
    queue.put(Row(scenario=scenario, method="am-segm", seed=100, grid=f"{rows}x{cols}", image=f"{size}x{size}",
                  angle_deg=4.0, missing_pct=5.0, accuracy_pct=round(100 * id_accuracy(drawn, reg.ids), 3),
                  time_s=round(elapsed, 3), peak_rss_so_far_mib=round(registered_rss),
                  note=f"peak RSS with mask and truth drawn, before registering: {before:.0f} MiB; "
                       f"write_outputs {written:.1f} s, peak RSS after it {peak_rss_mib():.0f} MiB"))


def run_large(*, scratch: bool = False) -> Row:
    """The 10000 x 10000 case in a fresh process, so its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_large_child, args=(queue, scratch))
    process.start()
    while True:  # a child that dies (out of memory, say) must end the benchmark, not hang it
        try:
            row = queue.get(timeout=1.0)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"the 10000 x 10000 case died with exit code {process.exitcode} "
                                   "(a negative code is the signal that killed it)") from None
    process.join()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds per scenario (default 5)")
    parser.add_argument("--scenarios", nargs="+", default=["mild", "hard", "faults", "uneven", "pieces"],
                        choices=["mild", "hard", "faults", "uneven", "pieces"], help="50 x 50 scenarios to run")
    parser.add_argument("--no-large", action="store_true", help="skip the 100 x 100 on 10000 x 10000 timing")
    parser.add_argument("--no-original", action="store_true", help="skip the original method")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    rows: list[Row] = []
    for scenario in args.scenarios:
        for seed in range(args.seeds):
            rows.extend(run_case(scenario, seed, original=not args.no_original))
    if not args.no_large:
        rows.append(run_large())
        rows.append(run_large(scratch=True))
    summary = summarise(rows)
    if args.json:
        print(json.dumps({"runs": [asdict(r) for r in rows], "summary": summary}, indent=2))
        return 0
    header = f"{'scenario':<8} {'method':<14} {'seed':>4} {'grid':>7} {'image':>11} {'angle':>6} {'miss%':>5} " \
             f"{'acc%':>8} {'time s':>7} {'RSS MiB':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.scenario:<8} {r.method:<14} {r.seed:>4} {r.grid:>7} {r.image:>11} {r.angle_deg:>6.2f} "
              f"{r.missing_pct:>5.1f} {r.accuracy_pct:>8.3f} {r.time_s:>7.2f} {r.peak_rss_so_far_mib:>7.0f}"
              + (f"  {r.note}" if r.note else ""))
    print("RSS MiB: the process's peak RSS so far, which only grows from row to row (the large cases run in "
          "a fresh process each, so theirs is their own)")
    print()
    print(f"{'scenario':<8} {'method':<14} {'runs':>4} {'mean acc%':>10} {'min acc%':>9} {'max time s':>10}")
    for s in summary:
        print(f"{s['scenario']:<8} {s['method']:<14} {s['runs']:>4} {s['mean_accuracy_pct']:>10.3f} "
              f"{s['min_accuracy_pct']:>9.3f} {s['max_time_s']:>10.2f}")
    return 0


def summarise(rows: list[Row]) -> list[dict]:
    out = []
    for key in dict.fromkeys((r.scenario, r.method) for r in rows):
        group = [r for r in rows if (r.scenario, r.method) == key]
        out.append({
            "scenario": key[0], "method": key[1], "runs": len(group),
            "mean_accuracy_pct": round(float(np.mean([r.accuracy_pct for r in group])), 3),
            "min_accuracy_pct": round(float(np.min([r.accuracy_pct for r in group])), 3),
            "max_time_s": round(float(np.max([r.time_s for r in group])), 3),
        })
    return out


if __name__ == "__main__":
    sys.exit(main())
