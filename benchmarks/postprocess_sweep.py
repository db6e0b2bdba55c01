"""How the levels from probabilities to masks trade Dice against object F1, for one checkpoint.

    python benchmarks/postprocess_sweep.py [--model am/models/default.pt] [--synthetic 40] [--seed 2027]
        [--thresholds 0.4,0.5] [--seed-thresholds off,0.85,0.9] [--core-px 50,100] [--min-px 20,40]
        [--fractions 0,0.2,0.3] [--real ../shared/data/real] [--json F]

The levels a checkpoint names (threshold, seed threshold, core size, speck size, speck fraction;
see ``am/model/masks.py``) were chosen here: the model's probabilities are computed once per
image, and every combination of the listed levels (each list defaults to the checkpoint's own
level) is applied to them and scored. The default images are the tuning set (seed 2027, 512 px,
pitch 22-80 px), never the held-out set (seed 424242), so the held-out figures stay unbiased by
the choice. With ``--real`` the crops are scored too (Dice against their references, object F1,
false marks on crop1's blob), as the choice must not trade real marks for synthetic ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from am.cli import describe_os_error, output_problem, threads_problem
from am.errors import AmError, InputError
from am.evaluate.metrics import Scores, score
from am.evaluate.real import CROP_SCALE, CROPS, MIN_MARK_PX, blob_false_marks, check_real_dir, read_crops
from am.files import write_atomic
from am.model.checkpoint import ModelMeta, default_model_path
from am.model.masks import mask_from_proba
from am.model.predict import Predictor
from am.model.separate import MIN_SEED_PX
from am.model.whole import predict_image_proba
from am.train.data import synthetic_images

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@dataclass(frozen=True)
class Levels:
    """One combination; ``seed_threshold`` None skips cutting touching marks apart."""

    threshold: float
    seed_threshold: float | None
    core_px: float
    min_px: int
    fraction: float

    def applied_to(self, meta: ModelMeta) -> ModelMeta:
        """``meta`` with these levels (checked as any checkpoint's are); the core size is no checkpoint
        field and goes to :func:`mask_from_proba` on its own."""
        return dataclasses.replace(meta, threshold=self.threshold, seed_threshold=self.seed_threshold,
                                   min_mark_px=self.min_px, min_mark_fraction=self.fraction)


def mask_at(proba: np.ndarray, levels: Levels, meta: ModelMeta, *, pixel_area: float = 1.0) -> np.ndarray:
    """The checkpoint's mask of ``proba`` at ``levels`` instead of its own."""
    return mask_from_proba(proba, levels.applied_to(meta), pixel_area=pixel_area, min_seed_px=levels.core_px)


def grid(thresholds: list[float], seeds: list[float | None], cores: list[float], min_px: list[int],
         fractions: list[float]) -> list[Levels]:
    """Every combination, less those whose seed threshold does not lie above the threshold."""
    combos = [Levels(*c) for c in itertools.product(thresholds, seeds, cores, min_px, fractions)]
    valid = [c for c in combos if c.seed_threshold is None or c.threshold < c.seed_threshold < 1.0]
    if not valid:
        raise InputError("no combination has a seed threshold above its threshold; widen --seed-thresholds")
    return valid


def sweep(predictor: Predictor, levels: list[Levels], *, count: int, seed: int, size: int,
          pitch: tuple[float, float], real: Path | None) -> list[dict]:
    items = synthetic_images(count=count, size=size, seed=seed, pitch_range=pitch)
    cached = [(predict_image_proba(predictor, item.image), item.mask, item.weight > 0)
              for item in tqdm(items, desc="probabilities")]
    crops = [(n, predict_image_proba(predictor, image, scale=CROP_SCALE), reference)
             for n, image, reference in (read_crops(real) if real is not None else [])]
    rows = []
    for combo in tqdm(levels, desc="levels"):
        pooled = Scores.combine([score(truth * known, mask_at(proba, combo, predictor.meta) * known)
                                 for proba, truth, known in cached])
        row = {**asdict(combo), "dice": pooled.dice, "f1": pooled.f1}
        for n, proba, reference in crops:
            mask = mask_at(proba, combo, predictor.meta, pixel_area=CROP_SCALE**2)
            s = score(reference, mask, min_object_px=MIN_MARK_PX)
            row[f"crop{n}_dice"], row[f"crop{n}_f1"] = s.dice, s.f1
            if n == 1:
                row["blob_false_marks"] = blob_false_marks(mask, reference)[0]
        rows.append(row)
    return rows


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc


def _floats(text: str) -> list[float]:
    return [_number(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from exc


def _seeds(text: str) -> list[float | None]:
    """Seed thresholds; 'off' stands for no cutting apart."""
    return [None if v.strip() == "off" else _number(v) for v in text.split(",") if v.strip()]


def _table(rows: list[dict], own: Levels) -> str:
    head = ["", "threshold", "seed", "core px", "min px", "fraction", "Dice", "F1"]
    real = "crop1_dice" in rows[0]
    if real:
        head += ["crop1", "crop2", "crop3", "crop1 F1", "crop2 F1", "crop3 F1", "blob marks"]
    lines = [" ".join(f"{h:>9}" for h in head)[8:]]
    for r in rows:
        seed = "off" if r["seed_threshold"] is None else f"{r['seed_threshold']:.2f}"
        mine = Levels(**{k: r[k] for k in asdict(own)}) == own
        cells = ["*" if mine else "", f"{r['threshold']:.2f}", seed, f"{r['core_px']:.0f}", f"{r['min_px']:.0f}",
                 f"{r['fraction']:.2f}", f"{r['dice']:.4f}", f"{r['f1']:.4f}"]
        if real:
            cells += [f"{r[f'crop{n}_dice']:.4f}" for n in CROPS] + [f"{r[f'crop{n}_f1']:.3f}" for n in CROPS]
            cells.append(str(r["blob_false_marks"]))
        lines.append(" ".join(f"{c:>9}" for c in cells)[8:])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--synthetic", type=int, default=40, help="synthetic images (default 40)")
    p.add_argument("--seed", type=int, default=2027, help="synthetic seed (default 2027: the tuning set)")
    p.add_argument("--size", type=int, default=512, help="side of the tuning images in px (default 512)")
    p.add_argument("--pitch-min", type=float, default=22.0, help="smallest lattice pitch in px (default 22)")
    p.add_argument("--pitch-max", type=float, default=80.0, help="largest lattice pitch in px (default 80)")
    p.add_argument("--thresholds", type=_floats, default=None, help="e.g. 0.4,0.5 (default: the checkpoint's)")
    p.add_argument("--seed-thresholds", type=_seeds, default=None, help="e.g. off,0.85,0.9")
    p.add_argument("--core-px", type=_floats, default=None, help=f"seed core sizes, model px (default {MIN_SEED_PX})")
    p.add_argument("--min-px", type=_ints, default=None, help="speck sizes, whole model px")
    p.add_argument("--fractions", type=_floats, default=None, help="speck fractions of the median mark")
    p.add_argument("--real", type=Path, default=None, help=f"also score the real crops here (e.g. {REAL})")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.synthetic < 1:
        p.error(f"--synthetic {args.synthetic} must be >= 1")
    if problem := threads_problem(args.threads):
        p.error(problem)
    # Checked before the sweep's minutes of predictions, not when the rows are written.
    if args.json is not None and (problem := output_problem(args.json, folder=False)):
        p.error(f"--json: {problem}")
    try:
        real = check_real_dir(args.real) if args.real is not None else None
        predictor = Predictor.from_checkpoint(args.model or default_model_path(), device="cpu", threads=args.threads)
        meta = predictor.meta
        levels = grid(args.thresholds or [meta.threshold], args.seed_thresholds or [meta.seed_threshold],
                      args.core_px or [float(MIN_SEED_PX)], args.min_px or [meta.min_mark_px],
                      args.fractions or [meta.min_mark_fraction])
        for combo in levels:  # out-of-range levels fail here, before any image is predicted
            combo.applied_to(meta)
        rows = sweep(predictor, levels, count=args.synthetic, seed=args.seed, size=args.size,
                     pitch=(args.pitch_min, args.pitch_max), real=real)
    except AmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    own = Levels(meta.threshold, meta.seed_threshold, float(MIN_SEED_PX), meta.min_mark_px, meta.min_mark_fraction)
    print(f"{args.synthetic} synthetic images, seed {args.seed}, {args.size} px, "
          f"pitch {args.pitch_min}-{args.pitch_max}; * marks the checkpoint's own levels")
    print(_table(rows, own))
    if args.json is not None:
        try:
            write_atomic(args.json, json.dumps(rows, indent=1).encode())
        except OSError as exc:  # a disk that filled during the sweep, say: the table printed above stands
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
