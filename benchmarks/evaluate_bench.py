"""Time scoring one whole-image mask pair: what ``python -m am.evaluate`` spends per labelled image
besides the model.

    python benchmarks/evaluate_bench.py [--size 10000] [--pitch 40] [--seed 0] [--json]

The truth is a lattice of discs (radius 0.3 of the pitch); the prediction moves each by up to 4 px,
draws it half to one and a half times as wide and leaves a tenth out, so marks are missed, merged
with a neighbour and outlined too small or too large in numbers.
Reports seconds for labelling and matching (:func:`am.evaluate.metrics.score_and_overlaps`) and for
sorting the lost marks (:func:`am.evaluate.lost.account`), and checks that the account adds up to
what object F1 loses. Images of 20000 px hold up to about 250 000 marks at pitch 40. Also reports
the process's peak resident memory (RSS) since it started, the drawing of the masks included, so
the peak the README quotes for a 20000 px image can be measured again.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import cv2
import numpy as np

from am.evaluate.lost import account
from am.evaluate.metrics import score_and_overlaps


def mask_pair(size: int, pitch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A truth lattice and a prediction that moves, resizes and drops its marks."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), np.uint8)
    predicted = np.zeros((size, size), np.uint8)
    radius = max(2, int(0.3 * pitch))
    for y in range(pitch // 2, size - pitch // 2, pitch):
        for x in range(pitch // 2, size - pitch // 2, pitch):
            cv2.circle(truth, (x, y), radius, 1, -1)
            dx, dy = (int(v) for v in rng.integers(-4, 5, 2))
            if rng.random() >= 0.1:
                cv2.circle(predicted, (x + dx, y + dy), int(rng.integers(radius // 2, int(1.5 * radius) + 1)), 1, -1)
    return truth, predicted


def peak_rss_mib() -> float:
    """The peak resident memory of this process since it started, in MiB (getrusage: the kernel's own
    high-water mark, so no peak between samples is missed)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=10000, help="mask side in px (default 10000)")
    p.add_argument("--pitch", type=int, default=40, help="lattice pitch in px (default 40)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the prediction's shifts, sizes and dropped marks (default 0)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if args.size < 2 * args.pitch or args.pitch < 8:
        p.error(f"--size {args.size} must hold two pitches and --pitch {args.pitch} must be at least 8")
    truth, predicted = mask_pair(args.size, args.pitch, args.seed)
    start = time.perf_counter()
    scores, found = score_and_overlaps(truth, predicted)
    scored = time.perf_counter()
    lost = account(found)
    done = time.perf_counter()
    adds_up = lost.unmatched_true + lost.unmatched_predicted == scores.lost_objects
    figures = {"size": args.size, "pitch": args.pitch, "true_marks": scores.true_objects,
               "predicted_marks": scores.predicted_objects, "f1": round(scores.f1, 4),
               "score_s": round(scored - start, 3), "account_s": round(done - scored, 3),
               "lost": lost.as_dict(), "account_adds_up": adds_up, "process_peak_rss_mib": round(peak_rss_mib())}
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{args.size} x {args.size} px, {scores.true_objects} true and {scores.predicted_objects} predicted "
              f"marks, object F1 {scores.f1:.3f}")
        print(f"labelling and matching {figures['score_s']:.2f} s, lost-mark account {figures['account_s']:.2f} s")
        print(f"peak RSS of the process (drawing the masks included): {figures['process_peak_rss_mib']} MiB")
        print(lost.summary())
    if not adds_up:
        print("the lost-mark account does not add up to what object F1 loses", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
