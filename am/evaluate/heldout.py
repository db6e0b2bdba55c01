"""The synthetic held-out set behind the shipped model's targets.

Its seed and size are ones training never uses (training draws seed 0 and validates on seed
1000 at 384/512 px), so the figures say how the model does on images it has not seen; the
benchmark (``benchmarks/model_quality.py``) and the shipped-model test read the same set::

    items = held_out_images()          # 40 images of 512 x 512, pitch 22-80 px
    held_out_style(12)                 # how image 12 was drawn, to say what a model misses
"""

from __future__ import annotations

from am.synth.dataset import sample_at
from am.synth.render import Style
from am.train.data import Labelled, synthetic_images

HELD_OUT_SEED = 424242
HELD_OUT_PITCH = (22.0, 80.0)
HELD_OUT_SIZE = 512
HELD_OUT_COUNT = 40


def held_out_images(count: int = HELD_OUT_COUNT) -> list[Labelled]:
    """The first ``count`` images of the held-out set (image ``i`` is the same whatever the count)."""
    return synthetic_images(count=count, size=HELD_OUT_SIZE, seed=HELD_OUT_SEED, pitch_range=HELD_OUT_PITCH)


def held_out_style(index: int) -> Style:
    """The style image ``index`` of the held-out set was drawn in (the image is rendered again)."""
    return sample_at(HELD_OUT_SEED, index, size=HELD_OUT_SIZE, pitch_range=HELD_OUT_PITCH).style
