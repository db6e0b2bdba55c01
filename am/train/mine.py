"""Hard synthetic images for a model: the generated images it does worst on, saved for training.

Most of what a model loses on the synthetic held-out set comes from a few images of a few
styles (small rimmed "C" marks under shadow, grey marks on busy tissue): drawn at the
generator's own rates they are a small share of the crops a training run sees, so a run spends
most of its steps on marks the model already finds. Mining renders ``count`` fresh images,
scores the model's masks on each (as its checkpoint makes them) and keeps the worst
``keep`` of them in the original training layout, so ``am.train --data ROOT`` can mix them with
fresh synthetic images::

    report = mine_hard(predictor, Path("runs/hard"), count=1200, keep=300, size=384, seed=131)
    report.group          # runs/hard/train/hard/seed131 with source/, mask/ and scores.csv

Image ``i`` is the generator's image ``i`` of ``seed`` (its file is ``{i:05d}.png``), so a kept
image can be rendered again, with its style, from its name.
"""

from __future__ import annotations

# Loaded with the interpreter already, so importing it leaves no time for a Ctrl-C; every other import is in the
# try below (am.startup).
import logging

try:
    import argparse
    import csv
    import heapq
    import io
    import os
    from collections import Counter
    from collections.abc import Callable, Iterable, Iterator
    from dataclasses import dataclass
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from am.cli import (
        RERUN_TO_START_AGAIN,
        add_log_level_option,
        add_postprocess_option,
        configure_logging,
        path_option,
        run_main,
        seed_option,
        threads_problem,
    )
    from am.errors import InputError
    from am.evaluate.metrics import Scores, score
    from am.files import check_can_replace, staging, swap_in, write_atomic
    from am.imageio import write_png
    from am.model.checkpoint import default_model_path
    from am.model.predict import Predictor
    from am.model.whole import predict_image_mask
    from am.startup import NOTHING_DONE, hold_ctrl_c, run_command
    from am.synth.dataset import STAGING_NAME, Sample, iter_samples, pitch_range_problem

    if __name__ == "__main__":
        hold_ctrl_c()  # until run_command runs main() (the end of this file)
except KeyboardInterrupt:
    from am.startup import interrupted_while_loading  # again: the Ctrl-C may have come while am.startup loaded

    interrupted_while_loading(__name__, "am.train.mine")

log = logging.getLogger("am.train.mine")  # not __main__ when run with -m

SCORE_COLUMNS = ("file", "quality", "dice", "f1", "true_marks", "predicted_marks",
                 "polarity", "shape", "pitch_px", "mark_radius_px", "shadow", "blur")


@dataclass(frozen=True)
class Mined:
    """One scored image; ``quality`` is the mean of its Dice and object F1 (lower is harder)."""

    index: int
    quality: float
    scores: Scores
    sample: Sample


@dataclass(frozen=True)
class MiningReport:
    group: Path
    rendered: int
    kept: list[Mined]
    all_scores: Scores  # pooled over every rendered image
    kept_scores: Scores  # pooled over the kept ones


def image_quality(scores: Scores) -> float:
    """Dice and object F1 weigh alike: an image of merged marks and one of missed marks are both hard."""
    return (scores.dice + scores.f1) / 2


def mine_hard(
    predictor: Predictor,
    root: Path,
    *,
    count: int,
    keep: int,
    size: int = 384,
    seed: int = 131,
    pitch_range: tuple[float, float] = (20.0, 85.0),
    force: bool = False,
    progress: Callable[[Iterator[Sample]], Iterable[Sample]] | None = None,
) -> MiningReport:
    """Render ``count`` images, write the ``keep`` with the lowest quality to ``root/train/hard/seed<seed>/``.

    Only the worst ``keep`` images are held in memory. An existing group folder is refused unless
    ``force``, so a second mining never mixes its images into an earlier one's.
    """
    if count < 1 or not 1 <= keep <= count:
        raise InputError(f"need count >= 1 and 1 <= keep <= count, got count={count}, keep={keep}")
    if size < 32 or size % 32:
        raise InputError(f"size must be a multiple of 32 (>= 32), got {size}")
    group = check_mining_output(Path(root), seed=seed, force=force)
    samples: Iterable[Sample] = iter_samples(seed, count, size=size, pitch_range=pitch_range)
    if progress is not None:
        samples = progress(samples)
    worst: list[tuple[float, int, Mined]] = []  # a max-heap of the kept qualities (negated)
    every: list[Scores] = []
    for index, sample in enumerate(samples):
        predicted = predict_image_mask(predictor, sample.image)
        scores = score(sample.mask > 0, predicted)
        every.append(scores)
        mined = Mined(index=index, quality=image_quality(scores), scores=scores, sample=sample)
        entry = (-mined.quality, -index, mined)
        if len(worst) < keep:
            heapq.heappush(worst, entry)
        elif entry > worst[0]:
            heapq.heapreplace(worst, entry)
    kept = sorted((m for _, _, m in worst), key=lambda m: (m.quality, m.index))
    # Built beside the training folders and swapped in whole: an interrupted or failed mining leaves
    # the earlier one (if any) as it was, never a group of images without masks or scores.
    with staging(Path(root) / f"{STAGING_NAME}-hard-seed{seed}") as stage:
        for mined in kept:
            write_png(stage / "source" / f"{mined.index:05d}.png", mined.sample.image)
            write_png(stage / "mask" / f"{mined.index:05d}.png", mined.sample.mask)
        write_atomic(stage / "scores.csv", _scores_csv(kept).encode())
        swap_in(stage, group)
    report = MiningReport(group=group, rendered=len(every), kept=kept, all_scores=Scores.combine(every),
                          kept_scores=Scores.combine([m.scores for m in kept]))
    log.info("kept %d of %d images in %s (quality %.3f to %.3f)", len(kept), len(every), group,
             kept[0].quality, kept[-1].quality)
    return report


def check_mining_output(root: Path, *, seed: int, force: bool) -> Path:
    """The group folder mining ``seed`` writes under ``root``, once it is sure it can be written.

    Raises InputError (a file given as the root or as the group, an earlier mining not forced) or
    the OSError of a file on the way or a read-only folder, naming it, before any image is
    rendered: the staging folder is made only after every image was rendered and scored, minutes
    of work at the default --count that such a failure would throw away.
    """
    group = root / "train" / "hard" / f"seed{seed}"
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file; give a folder for the training root (--out)")
    if group.exists() and not group.is_dir():
        raise InputError(f"{group} is a file, where mined images go; move it aside, or choose another --seed or --out")
    if group.is_dir() and any(group.iterdir()) and not force:
        raise InputError(f"{group} already holds mined images; choose another --seed or --out, or pass --force")
    # The group and the staging folder beside the training folders (root/.synth.partial-hard-seed<seed>).
    check_can_replace([group, root / f"{STAGING_NAME}-hard-seed{seed}"])
    return group


def _scores_csv(kept: list[Mined]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SCORE_COLUMNS)
    for m in kept:
        style = m.sample.style
        writer.writerow([f"{m.index:05d}.png", f"{m.quality:.4f}", f"{m.scores.dice:.4f}", f"{m.scores.f1:.4f}",
                         m.scores.true_objects, m.scores.predicted_objects, style.polarity, style.shape,
                         f"{style.pitch:.1f}", f"{style.mark_radius:.1f}", f"{style.shadow:.2f}", f"{style.blur:.2f}"])
    return out.getvalue()


def style_counts(kept: list[Mined], field: str) -> dict[str, int]:
    """How many kept images have each value of a style field, most frequent first (for the summary)."""
    counts = Counter(str(getattr(m.sample.style, field)) for m in kept)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def main(argv: list[str] | None = None) -> int:
    """``python -m am.train.mine --model CKPT --out ROOT --count N --keep K``: mine, then print a summary."""
    p = argparse.ArgumentParser(prog="python -m am.train.mine", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=path_option, default=None,
                   help="checkpoint to mine for (default: the shipped model)")
    p.add_argument("--out", type=path_option, required=True,
                   help="training root; images go to OUT/train/hard/seed<SEED>/")
    p.add_argument("--count", type=int, default=1200, help="images to render and score (default 1200)")
    p.add_argument("--keep", type=int, default=300, help="how many of the worst to keep (default 300)")
    p.add_argument("--size", type=int, default=384, help="image side in px, a multiple of 32 (default 384)")
    p.add_argument("--seed", type=seed_option, default=131, help="generator seed (default 131)")
    p.add_argument("--pitch-min", type=float, default=20.0, help="smallest grid pitch in px (default 20)")
    p.add_argument("--pitch-max", type=float, default=85.0, help="largest grid pitch in px (default 85)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="CPU threads for the model (default 2, or 1 on a machine of one CPU)")
    p.add_argument("--force", action="store_true",
                   help="replace the group an earlier mining wrote to the same folder (only once the new one is "
                        "complete)")
    add_postprocess_option(p)
    add_log_level_option(p)
    args = p.parse_args(argv)
    if args.count < 1 or not 1 <= args.keep <= args.count:
        p.error(f"need --count >= 1 and 1 <= --keep <= --count, got {args.count} and {args.keep}")
    if args.size < 32 or args.size % 32:
        p.error(f"--size must be a multiple of 32, got {args.size}")
    if problem := pitch_range_problem(args.pitch_min, args.pitch_max):
        p.error(problem)
    if problem := threads_problem(args.threads):
        p.error(problem)
    configure_logging(args.log_level)

    def run() -> int:
        check_mining_output(args.out, seed=args.seed, force=args.force)  # before the model is even loaded
        predictor = Predictor.from_checkpoint(args.model or default_model_path(), device="cpu",
                                              threads=args.threads, postprocess=args.postprocess == "on")
        report = mine_hard(predictor, args.out, count=args.count, keep=args.keep, size=args.size, seed=args.seed,
                           pitch_range=(args.pitch_min, args.pitch_max), force=args.force,
                           progress=lambda it: tqdm(it, total=args.count, desc="images", unit="img"))
        every, kept = report.all_scores, report.kept_scores
        print(f"rendered {report.rendered} images: dice {every.dice:.4f} object F1 {every.f1:.4f}")
        print(f"kept the {len(report.kept)} hardest in {report.group}: dice {kept.dice:.4f} object F1 {kept.f1:.4f} "
              f"(mean quality {np.mean([m.quality for m in report.kept]):.3f}; scores.csv lists each)")
        for field in ("polarity", "shape"):
            print(f"  {field}: " + ", ".join(f"{k} {v}" for k, v in style_counts(report.kept, field).items()))
        return 0

    return run_main(run, name="am.train.mine", interrupted=RERUN_TO_START_AGAIN)


if __name__ == "__main__":
    run_command(main, "am.train.mine", NOTHING_DONE)
