"""Quality of a checkpoint against the shipped model's targets, on synthetic and real images.

    python benchmarks/model_quality.py [--model am/models/default.pt] [--synthetic 40] [--overlays DIR] [--tta d4]
        [--device cuda] [--worst 5]

- synthetic held-out set: seeds and parameters that training never used (512 px images, pitch
  22-80 px, seed 424242); targets Dice >= 0.95 and object F1 >= 0.97 (pooled). The images with the
  most wrong pixels are listed with the style each was drawn in: a pooled figure weighs every
  pixel alike, so a few images a model cannot read can hold most of what it lacks. The wrong
  pixels within 1 px of a true edge are counted by side (missed, drawn too many): outlines drawn
  too tight or too wide show there. The marks object F1 loses are sorted by what happened to
  them (missed, merged with a neighbour, split, outlined too small or too large) and the false
  ones by whether they touch a mark;
- real crops (--real DIR; by default ../shared/data/real beside the checkout, when it is there):
  Dice against the reference masks >= 0.85 on crop2 and crop3, no false marks on the bright blob
  of crop1; tile_a/tile_b: mark counts and overlays to look at.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from am.cli import add_postprocess_option, add_precision_option, describe_os_error, output_problem, threads_problem
from am.errors import AmError
from am.evaluate.heldout import HELD_OUT_PITCH, HELD_OUT_SEED, held_out_images, held_out_style
from am.evaluate.lost import LostMarks
from am.evaluate.metrics import EdgeErrors, Scores, edge_errors, most_wrong, score
from am.evaluate.paired import per_image_counts
from am.evaluate.real import evaluate_real
from am.evaluate.run import evaluate
from am.files import write_atomic
from am.messages import TTA_MODES
from am.model.checkpoint import default_model_path
from am.model.predict import Predictor
from am.synth.render import Style

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
MIN_MARK_PX = 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--synthetic", type=int, default=40, help="held-out synthetic images (default 40)")
    real = p.add_mutually_exclusive_group()
    real.add_argument("--real", type=Path, default=None,
                      help=f"real samples folder; naming one that does not exist is an error (default {REAL} "
                           "when it exists, else the real samples are skipped)")
    real.add_argument("--skip-real", action="store_true", help="leave the real samples out")
    p.add_argument("--overlays", type=Path, default=None, help="write real-sample overlays here")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    add_precision_option(p)
    p.add_argument("--tta", choices=TTA_MODES, default="off", help="test-time augmentation (default off)")
    add_postprocess_option(p)
    p.add_argument("--worst", type=int, default=5,
                   help="list the held-out images with the most wrong pixels and how they were drawn (default 5)")
    p.add_argument("--json", type=Path, default=None, help="write all figures as JSON here")
    args = p.parse_args(argv)
    if args.real is not None and not args.real.is_dir():
        p.error(f"--real {args.real} does not exist (or is not a folder); give the folder holding crop1-3 and "
                "tile_a/tile_b, or --skip-real to leave them out")
    # Output paths are checked before minutes of predictions, not when the figures are written.
    if args.json is not None and (problem := output_problem(args.json, folder=False)):
        p.error(f"--json: {problem}")
    if args.overlays is not None and (problem := output_problem(args.overlays, folder=True)):
        p.error(f"--overlays: {problem}")
    if problem := threads_problem(args.threads):
        p.error(problem)
    real_dir = None if args.skip_real else args.real or (REAL if REAL.is_dir() else None)
    logging.basicConfig(level=logging.WARNING)
    model = args.model or default_model_path()
    if args.device.startswith("cuda") and args.precision == "fp32":
        # CUDA convolutions and matmuls take TF32 for fp32 by default: the figures would not be those of
        # fp32 on CPU, which the README's are and a GPU-trained candidate is compared with.
        import torch

        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        predictor = Predictor.from_checkpoint(model, device=args.device, threads=args.threads, tta=args.tta,
                                              precision=args.precision,
                                              postprocess=args.postprocess == "on")
        out: dict = {"model": str(model), "encoder": predictor.meta.encoder, "tta": args.tta,
                     "precision": predictor.precision}
        print(f"model {model} ({predictor.meta.encoder}), {predictor.precision}, test-time augmentation {args.tta}")
        if args.synthetic > 0:
            items = held_out_images(args.synthetic)
            results = evaluate(predictor, items)
            pooled = Scores.combine([r.scores for r in results])
            mean_dice = sum(r.scores.dice for r in results) / len(results)
            # The same predictions with specks below MIN_MARK_PX left out of the object counts (pixels unchanged),
            # as registration does when it keeps only mark-sized components.
            specks = Scores.combine([score(item.mask, r.predicted, min_object_px=MIN_MARK_PX)
                                     for item, r in zip(items, results, strict=True)])
            out["synthetic"] = {"images": len(results), "dice_pooled": pooled.dice, "dice_mean": mean_dice,
                                "iou_pooled": pooled.iou, "precision": pooled.precision, "recall": pooled.recall,
                                "f1": pooled.f1, "true_objects": pooled.true_objects,
                                "lost_objects": pooled.lost_objects, f"f1_min_{MIN_MARK_PX}px": specks.f1,
                                f"precision_min_{MIN_MARK_PX}px": specks.precision, "seed": HELD_OUT_SEED,
                                # Image by image, so compare_quality.py can tell a change from the luck of the draw.
                                "per_image": per_image_counts([r.scores for r in results])}
            s = out["synthetic"]
            print(f"synthetic held-out ({s['images']} images, seed {HELD_OUT_SEED}, pitch {HELD_OUT_PITCH}): "
                  f"dice {s['dice_pooled']:.4f} (mean per image {s['dice_mean']:.4f}) iou {s['iou_pooled']:.4f} "
                  f"object P {s['precision']:.4f} R {s['recall']:.4f} F1 {s['f1']:.4f}  "
                  f"[target dice >= 0.95, F1 >= 0.97: "
                  f"{'PASS' if s['dice_pooled'] >= 0.95 and s['f1'] >= 0.97 else 'FAIL'}]")
            print(f"  ignoring predicted/true components under {MIN_MARK_PX} px: object P {specks.precision:.4f} "
                  f"F1 {specks.f1:.4f}")
            edges = EdgeErrors.combine([edge_errors(item.mask, r.predicted)
                                        for item, r in zip(items, results, strict=True)])
            s["edges"] = asdict(edges)
            print(f"  at the edges: {100 * edges.near_edge_px / max(1, edges.wrong_px):.1f} % of the wrong pixels lie "
                  f"within 1 px of a true mark's edge: {edges.missed_px} missed, {edges.extra_px} drawn too many")
            lost = LostMarks.combine([r.lost for r in results])
            s["lost"] = lost.as_dict()
            print(f"  {lost.summary()}")
            if args.worst > 0:
                s["worst"] = worst_report([r.scores for r in results], args.worst)
        if real_dir is not None:
            real = evaluate_real(predictor, real_dir, overlays=args.overlays)
            out["real"] = real
            for name, c in real["crops"].items():
                extra = ""
                if name == "crop1":
                    extra = f" blob false marks {c['blob_false_marks']} ({c['blob_false_px']} px) [target 0]"
                target = " [target dice >= 0.85]" if name in ("crop2", "crop3") else ""
                print(f"{name}: dice {c['dice']:.4f} iou {c['iou']:.4f} object F1 {c['f1']:.4f} "
                      f"marks {c['predicted_marks']} vs reference {c['reference_marks']}{target}{extra}")
                print(f"  {LostMarks(**c['lost']).summary()}")
            for name, t in real["tiles"].items():
                print(f"{name}: {t['marks']} marks found, median area {t['median_area_px']:.0f} px, "
                      f"mask covers {100 * t['mask_fraction']:.1f}%, {t['specks']} specks ({t['speck_px']} px)")
        elif args.skip_real:
            print("real samples skipped (--skip-real)")
        else:
            print(f"real samples not found at {REAL}; skipped (give --real DIR to measure them)")
    except AmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json is not None:
        try:
            write_atomic(args.json, json.dumps(out, indent=1).encode())
        except OSError as exc:  # a disk that filled during the run, say: the figures printed above stand
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            return 1
    return 0


def worst_report(scores: list[Scores], count: int) -> list[dict]:
    """Print and return the held-out images holding most of the pooled error, with the style each was drawn in."""
    worst = most_wrong(scores, count)
    pooled = Scores.combine(scores)
    rest = Scores.combine([s for i, s in enumerate(scores) if i not in worst])
    pixels = sum(scores[i].wrong_px for i in worst)
    marks = sum(scores[i].lost_objects for i in worst)
    print(f"  where the error lies: {len(worst)} of {len(scores)} images hold "
          f"{100 * pixels / max(1, pooled.wrong_px):.1f} % of the wrong pixels and "
          f"{100 * marks / max(1, pooled.lost_objects):.1f} % of the lost marks; "
          f"without them dice {rest.dice:.4f}, F1 {rest.f1:.4f}")
    report = []
    for i in worst:
        style = style_text(held_out_style(i))
        own = scores[i]
        print(f"    image {i}: {100 * own.wrong_px / max(1, pooled.wrong_px):.1f} % of the wrong pixels, "
              f"dice {own.dice:.3f}, {own.lost_objects} marks lost; {style}")
        report.append({"image": i, "wrong_px": own.wrong_px, "lost_marks": own.lost_objects, "dice": own.dice,
                       "f1": own.f1, "style": style})
    return report


def style_text(style: Style) -> str:
    return (f"{style.polarity} {style.shape} marks, pitch {style.pitch:.1f} px, radius {style.mark_radius:.1f} px, "
            f"contrast {style.contrast:.2f}, blur {style.blur:.2f} px")


if __name__ == "__main__":
    sys.exit(main())
