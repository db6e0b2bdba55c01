"""am.train reads a --data image as the pipeline's input and am.evaluate read it: contrast-stretched at 1-99 %,
whatever its bit depth, so that it trains and validates the model on the look the model meets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from am.imageio import write_png
from am.normalize import read_normalised
from am.train.data import split_files, synthetic_images


def test_a_low_contrast_8_bit_image_is_stretched_as_the_pipeline_stretches_it(tmp_path: Path) -> None:
    [item] = synthetic_images(count=1, size=96, seed=7)
    faint = (item.image.astype(np.float32) * 0.05 + 100).astype(np.uint8)  # 13 grey levels, around 100
    group = tmp_path / "train" / "ds" / "g"
    write_png(group / "source" / "a.png", faint)
    write_png(group / "mask" / "a.png", item.mask * 255)
    [labelled_file] = split_files(tmp_path, "train")

    image = labelled_file.read().image
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255
    assert np.array_equal(image, read_normalised(group / "source" / "a.png"))
