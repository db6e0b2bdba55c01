"""How far apart an image's marks are, read from the image itself, before any model runs.

The model finds marks at the scale it was trained on (the shipped one: lattice pitch 20-85 px).
Marks four times larger come out of it in pieces and registration fails much later with an
error about the grid; the pitch, read in a fraction of a second while the image is prepared,
says so at once and which ``--scale`` brings the marks into range.

The lattice shows in the image's autocorrelation as a peak at each lattice vector. It counts only
where the peak at twice the strongest off-centre peak's vector stands up too: a lattice repeats,
tissue texture does not. The strongest peak is often a longer vector than the shortest (twice
the pitch, or a diagonal): a peak between two pixels splits its height over them, and crescents
correlate best with marks further along. So the shortest peak of at least ``STRONG_FRACTION`` of
the strongest that repeats as well is taken as the shortest vector. A central window of
``FFT_PX`` square is read at full resolution, and where it shows no lattice, one of
``WINDOW_PX`` shrunk to ``FFT_PX`` (for marks too far apart for the first), so a 20000 px image
costs what a 2048 px one does::

    pitch = estimate_pitch(image)          # px, or None where no lattice shows
    warn_if_off_scale(image, scale=1.0, name="source/g/image.tif")
    scale = resolve_scale(image, "auto", name="group g")   # 1, or the factor the warning names
"""

from __future__ import annotations

import logging
from functools import lru_cache

import cv2
import numpy as np
import scipy.fft

from am.settings import AUTO_SCALE, SCALE_RANGE

log = logging.getLogger(__name__)

# The lattice pitch the shipped model was trained on (am.train's synthetic pitch range).
TRAINED_PITCH_PX = (20.0, 85.0)
# Outside this range, at the scale the model sees, the masks are likely to break marks apart or miss them.
SAFE_PITCH_PX = (14.0, 120.0)
# The pitch a suggested --scale brings the marks to: the middle of the trained range, in ratio.
TARGET_PITCH_PX = 45.0
WINDOW_PX = 2048
FFT_PX = 1024
# The strongest off-centre autocorrelation peak must reach this (1 at the centre) ...
MIN_PEAK = 0.1
# ... the shortest peak of at least this fraction of it is the lattice's shortest vector ...
STRONG_FRACTION = 0.5
# ... and the peak at twice its vector this fraction of it.
MIN_HARMONIC = 0.4
# Peaks nearer the centre than this many (FFT) pixels are the texture's own correlation.
MIN_LAG_PX = 6


def estimate_pitch(image: np.ndarray) -> float | None:
    """The shortest lattice vector's length in the image's pixels, or None where no lattice shows."""
    height, width = image.shape[:2]
    pitch = _pitch_in(_central(image, FFT_PX), factor=1.0)
    if pitch is None and min(height, width) > FFT_PX:
        side = min(height, width, WINDOW_PX)
        shrunk = cv2.resize(_central(image, side), (FFT_PX, FFT_PX), interpolation=cv2.INTER_AREA)
        pitch = _pitch_in(shrunk, factor=side / FFT_PX)
    return pitch


def _pitch_in(window: np.ndarray, *, factor: float) -> float | None:
    """The shortest lattice vector in ``window``, times ``factor`` (the window's shrink)."""
    size = window.shape
    if min(size) < 4 * MIN_LAG_PX:
        return None
    data = window.astype(np.float32)
    data -= data.mean()
    spread = float(data.std())
    if not spread > 0:
        return None
    taper, usable = _window_constants(size)
    power = np.abs(scipy.fft.rfft2(data * taper)) ** 2
    correlation = np.fft.fftshift(scipy.fft.irfft2(power, s=size))
    correlation /= correlation.max()
    centre = np.array([size[0] // 2, size[1] // 2])
    local_max = correlation == cv2.dilate(correlation, np.ones((5, 5), np.uint8))
    candidates = np.argwhere(usable & local_max)
    if candidates.size == 0:
        return None
    # A peak between pixels splits its height: each peak counts at its 3x3 neighbourhood's best.
    heights = cv2.dilate(correlation, np.ones((3, 3), np.uint8))[candidates[:, 0], candidates[:, 1]]
    vectors = candidates - centre
    lengths = np.hypot(vectors[:, 0], vectors[:, 1])

    def repeats(index: int) -> bool:
        twice = centre + 2 * vectors[index]
        harmonic = float(correlation[twice[0] - 1 : twice[0] + 2, twice[1] - 1 : twice[1] + 2].max())
        return harmonic >= MIN_HARMONIC * heights[index]

    # Whether a lattice shows at all is the strongest peak's test; which of its vectors is the
    # shortest, the shorter strong peaks' (each tested too, so chance peaks of texture do not count).
    strongest = int(np.argmax(heights))
    if heights[strongest] < MIN_PEAK or not repeats(strongest):
        return None
    for index in np.argsort(lengths, kind="stable"):
        if lengths[index] >= lengths[strongest]:
            break
        if heights[index] >= STRONG_FRACTION * heights[strongest] and repeats(index):
            return float(lengths[index]) * factor
    return float(lengths[strongest]) * factor


def suggested_scale(pitch: float) -> float:
    """The ``--scale`` that brings marks ``pitch`` px apart to the middle of the trained range."""
    return float(f"{TARGET_PITCH_PX / pitch:.2g}")


def auto_scale(pitch: float | None) -> float:
    """The factor ``--scale auto`` tiles an image at: 1 wherever the model copes with its marks as they
    are (no lattice seen, or a pitch in :data:`SAFE_PITCH_PX`), else the one the warning names.

    Marks inside the safe range are left alone rather than brought to the middle of it: the shipped
    model was trained across that range, and resizing costs detail (or time) for nothing.
    """
    if pitch is None:
        return 1.0
    low, high = SAFE_PITCH_PX
    if low <= pitch <= high:
        return 1.0
    return min(max(suggested_scale(pitch), SCALE_RANGE[0]), SCALE_RANGE[1])


def choose_scale(image: np.ndarray, *, name: str) -> float:
    """:func:`auto_scale` of the image's pitch, logged with the reason, so a person can check the overlay."""
    pitch = estimate_pitch(image)
    scale = auto_scale(pitch)
    if pitch is None:
        log.info("%s: no lattice of marks shows in the image's autocorrelation; --scale auto keeps it at 1", name)
    elif scale == 1.0:
        log.info("%s: marks about %.0f px apart, within the model's range; --scale auto keeps it at 1", name, pitch)
    else:
        log.info("%s: marks about %.0f px apart; --scale auto segments it at %g (marks about %.0f px apart), "
                 "check the overlay", name, pitch, scale, pitch * scale)
    return scale


def resolve_scale(image: np.ndarray, setting: float | str, *, name: str) -> float:
    """The factor ``image`` (normalised) is segmented at under the ``scale`` setting: the one ``auto``
    picks from its pitch, or the fixed one, with the warning where that leaves its marks far from
    the model's scale. The pipeline's preparation and ``am.serve`` both ask here, so they agree."""
    if setting == AUTO_SCALE:
        return choose_scale(image, name=name)
    scale = float(setting)
    warn_if_off_scale(image, scale=scale, name=name)
    return scale


def warn_if_off_scale(image: np.ndarray, *, scale: float, name: str) -> float | None:
    """Log the marks' pitch, and a warning with the ``--scale`` to use where the model would not see
    them at its scale; returns the pitch in the image's pixels (None where no lattice shows)."""
    pitch = estimate_pitch(image)
    if pitch is None:
        log.info("%s: no lattice of marks shows in the image's autocorrelation; its scale is not checked", name)
        return None
    seen = pitch * scale
    at_scale = "" if scale == 1.0 else f", {seen:.0f} px at --scale {scale:g}"
    low, high = SAFE_PITCH_PX
    if low <= seen <= high:
        log.info("%s: marks about %.0f px apart%s", name, pitch, at_scale)
        return pitch
    trained_low, trained_high = TRAINED_PITCH_PX
    log.warning(
        "%s: marks about %.0f px apart%s, far from the %.0f-%.0f px the shipped model was trained on: its masks "
        "may break marks apart or miss them; rerun with --scale %g or --scale auto (check the overlay)",
        name, pitch, at_scale, trained_low, trained_high, suggested_scale(pitch),
    )
    return pitch


@lru_cache(maxsize=8)
def _window_constants(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The taper and the lags searched for peaks, for a window of ``size``: computing them took most of
    a 512 px tile's reading, and post-processing reads every tile's pitch (read-only, as they are shared)."""
    taper = np.outer(np.hanning(size[0]), np.hanning(size[1])).astype(np.float32)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    lag = np.hypot(yy - size[0] // 2, xx - size[1] // 2)
    # Peaks up to a quarter of the window, so that the one at twice the vector is still inside it.
    usable = (lag > MIN_LAG_PX) & (lag < min(size) / 4)
    taper.flags.writeable = False
    usable.flags.writeable = False
    return taper, usable


def _central(image: np.ndarray, side: int) -> np.ndarray:
    """The central square of at most ``side`` px."""
    height, width = image.shape[:2]
    side = min(height, width, side)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]
