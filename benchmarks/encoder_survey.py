"""Which encoders could carry the CPU default: the shipped file's size and the model's time per tile.

    python benchmarks/encoder_survey.py [--encoders tu-mobilenetv3_large_100,resnet18,...]
                                        [--decoder-channels 128,64,32,16,8] [--threads 2] [--repeats 8]

The shipped default must stay within 15 MB and 250 ms per 512x512 tile on a 2-core CPU,
post-processing included. Before a bigger encoder is trained for hours, this says whether it could
ever ship: each encoder is built untrained (random weights: nothing is downloaded, nothing learnt)
with the shipped model's decoder, saved as ``am.train`` saves a checkpoint, both in fp16 (its
default) and in int8 (``--int8``: convolution weights a byte each, ``am/model/storage.py``), and timed on
held-out tiles as ``model_cpu_bench.py`` times the shipped model, but with masks thresholded only:
random weights give random masks, whose post-processing time would mean nothing. The shipped
model's post-processing (``model_cpu_bench.py`` prints it) is added to judge the target. Ends
with the encoders that fit both limits, in fp16 and in int8.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from am.bench.model import gflop_per_tile, median_ms_per_tile
from am.cli import channels_option
from am.errors import AmError
from am.evaluate.heldout import held_out_images
from am.model.build import load_model, write_untrained_checkpoint
from am.model.checkpoint import default_model_path, is_known_encoder, load_checkpoint, save_checkpoint
from am.model.predict import Predictor

SIZE_LIMIT_MB = 15.0
TIME_LIMIT_MS = 250.0
# What post-processing adds to the shipped model's tile on the 2-core AMD EPYC VM (README, CPU time row).
SHIPPED_POSTPROCESS_MS = 16.0
DEFAULT_ENCODERS = (
    "tu-mobilenetv3_large_100",  # the shipped default
    "tu-efficientnet_b0",
    "tu-regnety_008",
    "tu-mobilenetv4_conv_medium",
    "resnet18",
    "resnet34",
)


@dataclass(frozen=True)
class EncoderFigures:
    encoder: str
    params_m: float
    size_mb: float
    int8_size_mb: float
    gflop: float
    batch1_ms: float
    batch4_ms: float

    def fits(self, storage: str) -> bool:
        """Within both limits when stored in ``storage`` (fp16 or int8; the time is the same)."""
        size = self.int8_size_mb if storage == "int8" else self.size_mb
        worst = max(self.batch1_ms, self.batch4_ms) + SHIPPED_POSTPROCESS_MS
        return size <= SIZE_LIMIT_MB and worst <= TIME_LIMIT_MS


def measure(encoder: str, *, decoder_channels: tuple[int, ...], threads: int, repeats: int,
            folder: Path) -> EncoderFigures:
    """One encoder's figures, from a checkpoint written as training would write it."""
    path = write_untrained_checkpoint(folder / f"{encoder}.pt", encoder=encoder,
                                      decoder_channels=decoder_channels, storage="fp16")
    meta, model = load_model(path)
    int8 = folder / f"{encoder}.int8.pt"
    save_checkpoint(int8, model, meta, storage="int8")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    predictor = Predictor.from_checkpoint(path, device="cpu", threads=threads, batch_size=4, postprocess=False,
                                          precision="fp32")
    tiles = np.stack([item.image for item in held_out_images(4)])
    batch1, _ = median_ms_per_tile(predictor, tiles[:1], repeats=repeats)
    batch4, _ = median_ms_per_tile(predictor, tiles, repeats=repeats)
    return EncoderFigures(encoder=encoder, params_m=params, size_mb=path.stat().st_size / 1e6,
                          int8_size_mb=int8.stat().st_size / 1e6, gflop=gflop_per_tile(meta, tile_size=512),
                          batch1_ms=batch1, batch4_ms=batch4)


@contextlib.contextmanager
def _untrained_warnings_hidden() -> Iterator[None]:
    """Every model here is untrained on purpose: the predictor's warning that its masks mean nothing is
    noise. Its logger's level comes back afterwards, so a caller's other warnings are not lost."""
    logger = logging.getLogger("am.model.predict")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def table(rows: list[EncoderFigures]) -> str:
    lines = ["| encoder | parameters | file, fp16 / int8 | GFLOP per tile | ms per tile, batch 1 / 4 | "
             "fits, fp16 / int8 |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        fits = " / ".join("yes" if r.fits(storage) else "no" for storage in ("fp16", "int8"))
        lines.append(f"| {r.encoder} | {r.params_m:.1f} M | {r.size_mb:.1f} / {r.int8_size_mb:.1f} MB | "
                     f"{r.gflop:.1f} | {r.batch1_ms:.1f} / {r.batch4_ms:.1f} | {fits} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoders", default=",".join(DEFAULT_ENCODERS),
                   help="comma-separated smp / timm (tu-) encoder names (default: %(default)s)")
    p.add_argument("--decoder-channels", type=channels_option, default=None,
                   help="the 5 decoder widths (default: the shipped model's)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=8, help="timed calls per batch size; the median is kept (default 8)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.decoder_channels is None:
        args.decoder_channels = load_checkpoint(default_model_path())[0].decoder_channels
    elif len(args.decoder_channels) != 5:
        p.error(f"--decoder-channels {','.join(map(str, args.decoder_channels))}: give 5 widths, one per "
                "decoder stage")
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    unknown = [e for e in encoders if not is_known_encoder(e)]
    if not encoders or unknown:
        p.error(f"--encoders: {', '.join(unknown) or 'none given'}: name smp encoders (resnet18) or timm models "
                "with the tu- prefix (tu-efficientnet_b0)")
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="am-encoders-") as folder, _untrained_warnings_hidden():
        for encoder in encoders:
            try:
                rows.append(measure(encoder, decoder_channels=args.decoder_channels, threads=args.threads,
                                    repeats=args.repeats, folder=Path(folder)))
            except AmError as exc:
                print(f"error: {encoder}: {exc}", file=sys.stderr)
                return 1
            print(f"{encoder}: measured", file=sys.stderr, flush=True)
    print(f"{args.threads} threads, cores {os.cpu_count()}, fp32, masks thresholded only, "
          f"decoder {','.join(map(str, args.decoder_channels))}; fits: at most {SIZE_LIMIT_MB:.0f} MB and "
          f"{TIME_LIMIT_MS:.0f} ms per tile with {SHIPPED_POSTPROCESS_MS:.0f} ms of post-processing added")
    print(table(rows))
    for storage in ("fp16", "int8"):
        fitting = [r.encoder for r in rows if r.fits(storage)]
        print(f"fit both limits in {storage}: {', '.join(fitting) if fitting else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
