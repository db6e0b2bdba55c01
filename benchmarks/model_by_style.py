"""Where a checkpoint loses Dice and object F1: scores grouped by how the synthetic images look.

    python benchmarks/model_by_style.py [--model am/models/default.pt] [--count 300] [--tta off] [--json F]

The held-out figures of ``benchmarks/model_quality.py`` say how good a model is; this says on
which kinds of image it falls short (mark polarity and shape, pitch, how much of the pitch a mark
fills, blur, speckle), so that the next training run can dwell on them (``am.train
--synthetic-polarities``, ``--gap-weight``, ``--pitch-min``/``--pitch-max``). It draws fresh
images (seed 777 by default, one that training and the held-out set never use) and keeps each
one's style, which the held-out set's labelled images do not carry.

"lost" counts marks missed plus false marks: the objects that keep object F1 below 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tqdm import tqdm

from am.cli import add_postprocess_option, describe_os_error, masks_label, output_problem, threads_problem
from am.errors import AmError
from am.evaluate.heldout import HELD_OUT_PITCH, HELD_OUT_SIZE
from am.evaluate.metrics import Scores, score
from am.files import write_atomic
from am.messages import TTA_MODES
from am.model.checkpoint import default_model_path
from am.model.predict import Predictor
from am.model.whole import predict_image_mask
from am.synth.dataset import iter_samples
from am.synth.render import Style

STYLE_SEED = 777


@dataclass(frozen=True)
class Grouping:
    """One way to put images into groups: a style field and how its value becomes a group label."""

    name: str
    label: Callable[[Style], str]


def _bin(value: float, width: float) -> str:
    low = (value // width) * width
    return f"{low:g}-{low + width:g}"


GROUPINGS = (
    Grouping("polarity", lambda s: s.polarity),
    Grouping("shape", lambda s: s.shape),
    Grouping("pitch px", lambda s: _bin(s.pitch, 10.0)),
    Grouping("fill (radius/pitch)", lambda s: _bin(round(s.mark_radius / s.pitch, 6), 0.05)),
    Grouping("blur px", lambda s: _bin(s.blur, 0.4)),
    Grouping("speckle", lambda s: _bin(s.speckle, 0.1)),
)


@dataclass(frozen=True)
class GroupScores:
    grouping: str
    label: str
    images: int
    scores: Scores

    @property
    def lost(self) -> int:
        return self.scores.lost_objects


def group_scores(styled: Iterable[tuple[Style, Scores]], groupings: Iterable[Grouping] = GROUPINGS,
                 ) -> list[GroupScores]:
    """Pooled scores per group, groups of one grouping in label order."""
    styled = list(styled)
    out = []
    for grouping in groupings:
        members: dict[str, list[Scores]] = {}
        for style, scores in styled:
            members.setdefault(grouping.label(style), []).append(scores)
        for label in sorted(members, key=_label_order):
            out.append(GroupScores(grouping.name, label, len(members[label]), Scores.combine(members[label])))
    return out


def _label_order(label: str) -> tuple[float, str]:
    """Numeric bins in numeric order ("20-30" before "100-110"), names alphabetically."""
    try:
        return float(label.split("-")[0]), label
    except ValueError:
        return float("inf"), label


def table(groups: list[GroupScores], overall: Scores, images: int) -> str:
    lines = [f"{'group':<30} {'images':>6} {'dice':>6} {'F1':>6} {'lost':>6}", "-" * 58,
             f"{'all':<30} {images:>6} {overall.dice:>6.3f} {overall.f1:>6.3f} {overall.lost_objects:>6}"]
    current = None
    for g in groups:
        if g.grouping != current:
            lines.append(f"{g.grouping}:")
            current = g.grouping
        lines.append(f"  {g.label:<28} {g.images:>6} {g.scores.dice:>6.3f} {g.scores.f1:>6.3f} {g.lost:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--count", type=int, default=300, help="synthetic images (default 300)")
    p.add_argument("--seed", type=int, default=STYLE_SEED, help=f"generator seed (default {STYLE_SEED})")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--tta", choices=TTA_MODES, default="off", help="test-time augmentation (default off)")
    add_postprocess_option(p)
    p.add_argument("--json", type=Path, default=None, help="write the groups' figures as JSON here")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be >= 1")
    if problem := threads_problem(args.threads):
        p.error(problem)
    # Checked before minutes of predictions, not when the figures are written.
    if args.json is not None and (problem := output_problem(args.json, folder=False)):
        p.error(f"--json: {problem}")
    logging.basicConfig(level=logging.WARNING)
    model = args.model or default_model_path()
    try:
        predictor = Predictor.from_checkpoint(model, device="cpu", threads=args.threads, tta=args.tta,
                                              postprocess=args.postprocess == "on")
    except AmError as exc:
        print(f"model_by_style: {exc}", file=sys.stderr)
        return 1
    samples = iter_samples(args.seed, args.count, size=HELD_OUT_SIZE, pitch_range=HELD_OUT_PITCH)
    styled = []
    for sample in tqdm(samples, total=args.count, desc="images", unit="img"):
        predicted = predict_image_mask(predictor, sample.image, tile_size=HELD_OUT_SIZE)
        styled.append((sample.style, score(sample.mask > 0, predicted)))
    overall = Scores.combine([s for _, s in styled])
    groups = group_scores(styled)
    print(f"model {model} ({predictor.meta.encoder}), tta {args.tta}, "
          f"{masks_label(predictor.postprocess)}, "
          f"{args.count} images of seed {args.seed}")
    print(table(groups, overall, len(styled)))
    if args.json is not None:
        figures = json.dumps({
            "model": str(model), "tta": args.tta, "seed": args.seed, "images": len(styled),
            "overall": overall.as_dict(),
            "groups": [{"grouping": g.grouping, "label": g.label, "images": g.images, "lost": g.lost,
                        **g.scores.as_dict()} for g in groups],
        }, indent=1)
        try:
            write_atomic(args.json, figures.encode())
        except OSError as exc:  # a disk that filled during the run, say: the table printed above stands
            print(f"model_by_style: {describe_os_error(exc)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
