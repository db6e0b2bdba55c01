"""Benchmark the pitch read from an image (``am.pitch.estimate_pitch``) on synthetic lattices.

``--scale auto`` and the off-scale warning act on it, and post-processing reads each tile's
pitch the same way. Lattices of discs and crescents on 512-3000 px images, pitch 10-220 px (a
quarter of the image at most), angle -10, 0 and 7 degrees, rows as far apart as columns or 1.3
times further, blurred by 1 px over noisy tissue. A reading counts as right within 10 % of the
shortest lattice vector; the real samples' readings are printed beside::

    python benchmarks/pitch_bench.py            # the summary
    python benchmarks/pitch_bench.py --verbose  # every wrong reading too
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from am.pitch import auto_scale, estimate_pitch
from am.register.testing import draw_lattice_mask
from am.synth.lattice import Lattice

SIZES = (512, 1500, 2048, 3000)
PITCHES = (10, 14, 20, 25, 35, 45, 60, 85, 120, 160, 220)
ANGLES = (-10, 0, 7)
SHAPES = ("disc", "crescent")
ROW_RATIOS = (1.0, 1.3)
# Mark ids are 16-bit: lattices of more marks are left out.
MAX_MARKS = 60000
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
REAL_SAMPLES = ("tile_a_512.png", "tile_b_512.png", "crop1_image.png", "crop2_image.png", "crop3_image.png")


def lattice_image(size: int, pitch: float, angle: float, shape: str, row_ratio: float) -> np.ndarray:
    """Marks of ``shape`` on a lattice covering a ``size`` px square, over noisy grey tissue."""
    count = int(size / pitch) + 8
    lattice = Lattice.centred(rows=count, cols=count, width=size, height=size, pitch_x=pitch,
                              pitch_y=pitch * row_ratio, angle_deg=angle)
    drawn = draw_lattice_mask(lattice, width=size, height=size, radius=pitch * 0.27, shape=shape)
    blurred = cv2.GaussianBlur(drawn.mask, (0, 0), 1.0)
    noise = np.random.default_rng(0).normal(60, 15, blurred.shape)
    return (blurred * 0.6 + noise).clip(0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="print every wrong reading")
    args = parser.parse_args()
    wrong = other_scale = cases = 0
    seconds = 0.0
    for size in SIZES:
        for pitch in PITCHES:
            if pitch * 4 > size or (size / pitch + 8) ** 2 > MAX_MARKS:
                continue
            for angle in ANGLES:
                for shape in SHAPES:
                    for ratio in ROW_RATIOS:
                        cases += 1
                        image = lattice_image(size, pitch, angle, shape, ratio)
                        start = time.perf_counter()
                        read = estimate_pitch(image)
                        seconds += time.perf_counter() - start
                        right = read is not None and abs(read - pitch) < 0.1 * pitch
                        wrong += not right
                        # Within the 10 % a reading may still cross a limit of the safe range.
                        other_scale += not right and auto_scale(read) != auto_scale(float(pitch))
                        if not right and args.verbose:
                            print(f"  {size} px, pitch {pitch}, rows x{ratio}, {angle} deg, {shape}: read {read}")
    print(f"{cases - wrong} of {cases} lattices read within 10 % of their pitch; of the {wrong} others, "
          f"{other_scale} would change --scale auto's factor; {seconds / cases * 1000:.0f} ms per reading")
    for name in REAL_SAMPLES:
        path = REAL / name
        if path.is_file():
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            read = estimate_pitch(image)
            print(f"{name} ({image.shape[1]} x {image.shape[0]} px): "
                  + ("no lattice shows" if read is None else f"{read:.1f} px"))


if __name__ == "__main__":
    main()
