"""Training augmentations on uint8 images and their masks, driven by an explicit random generator.

Geometry (random crop at a random scale, flips, 90-degree rotations) moves image, mask and
loss weights together; photometry (brightness, contrast, gamma, blur, noise, polarity
inversion) and resolution loss touch only the image. Every call draws from the ``rng`` it is given, so a seeded
run sees the same crops::

    image, mask, weight = random_crop(rng, image, mask, weight, size=256, scale=(0.7, 1.4))
    image, mask, weight = flip_rotate(rng, image, mask, weight)
    image = photometric(rng, image)
    image = lose_resolution(rng, image, factor=(1.5, 2.5))
"""

from __future__ import annotations

import cv2
import numpy as np

# The smallest zoom a crop may be taken at: a crop zoomed out s times reads (crop / s)**2 source pixels,
# held while it is shrunk, so a zoom near 0 asks for terabytes. 0.25 keeps that within 16 times the
# crop's own area (a 2048 px window for a 512 px crop) and is far below any zoom trained so far (0.7).
MIN_SCALE = 0.25


def random_crop(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    weight: np.ndarray,
    *,
    size: int,
    scale: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` crop showing ``size / s`` source pixels, ``s`` log-uniform in ``scale``.

    Sources smaller than the window are reflect-padded; padded pixels get loss weight 0. A ``scale``
    below :data:`MIN_SCALE` is refused (ValueError): its window would not fit in memory.
    """
    if not MIN_SCALE <= scale[0] <= scale[1]:
        raise ValueError(f"crop zoom range {scale} must lie at or above {MIN_SCALE}, its lower end first")
    s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    window = max(8, int(round(size / s)))
    height, width = image.shape
    if height < window or width < window:
        ph, pw = max(0, window - height), max(0, window - width)
        pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        image = np.pad(image, pads, mode="reflect")
        mask = np.pad(mask, pads, mode="reflect")
        weight = np.pad(weight, pads, mode="constant", constant_values=0)
        height, width = image.shape
    y = int(rng.integers(0, height - window + 1))
    x = int(rng.integers(0, width - window + 1))
    image, mask, weight = (a[y : y + window, x : x + window] for a in (image, mask, weight))
    if window != size:
        interp = cv2.INTER_AREA if window > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interp)
        # OpenCV's INTER_NEAREST maps pixel corners, not centres as the image's interpolation does,
        # and would shift the labels half a pixel down and right of the marks they label.
        mask = (shrink_apart(mask, size) if window > size
                else cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST_EXACT))
        weight = cv2.resize(weight, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    return image, mask, weight


def shrink_apart(mask: np.ndarray, size: int) -> np.ndarray:
    """``mask`` (a square window, marks non-zero) resized down to ``size`` x ``size``, its marks kept apart.

    Shrinking keeps one source row or column in ``window / size`` and drops the rest, so the
    one-pixel seam between two abutting marks is dropped as often as any other row: in crops
    zoomed out 0.7-1 times from synthetic images of pitch 20-60 px, 8 % of the marks came out joined
    to a neighbour (in more than half the crops), teaching a model to draw as one what
    registration must number as two. Here the marks' labels are shrunk instead, and where two of
    them touch afterwards the pixels of the higher label go back to the tissue: a one-pixel seam again.
    """
    shrunk_mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    count, labels = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    if count < 3:
        return shrunk_mask
    # float32 holds every label exactly (a crop has far fewer than 2**24 marks) and is a type both
    # resize and erode accept.
    shrunk = cv2.resize(labels.astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    lowest_near = cv2.erode(np.where(shrunk > 0, shrunk, np.float32(count)), np.ones((3, 3), np.uint8),
                            borderType=cv2.BORDER_REPLICATE)
    # The labels were sampled at the very pixels the mask was, so the mask keeps its own values.
    return np.where(lowest_near >= shrunk, shrunk_mask, 0).astype(mask.dtype)


def flip_rotate(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One of the eight symmetries of the square, the same for all three arrays."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in (image, mask, weight):
        a = np.rot90(a, k)
        if flip:
            a = a[:, ::-1]
        out.append(np.ascontiguousarray(a))
    return out[0], out[1], out[2]


def photometric(rng: np.random.Generator, image: np.ndarray, *, invert_p: float = 0.1) -> np.ndarray:
    """Brightness, contrast, gamma, occasional blur, noise and polarity inversion; returns uint8."""
    x = image.astype(np.float32) / 255.0
    if rng.random() < invert_p:
        x = 1.0 - x
    x = (x - 0.5) * float(np.exp(rng.normal(0, 0.2))) + 0.5 + rng.normal(0, 0.08)
    x = np.clip(x, 0.0, 1.0) ** float(np.exp(rng.normal(0, 0.25)))
    if rng.random() < 0.25:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.5, 1.5)))
    if rng.random() < 0.4:
        x = x + rng.normal(0, rng.uniform(0.01, 0.06), size=x.shape).astype(np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def lose_resolution(rng: np.random.Generator, image: np.ndarray, *, factor: tuple[float, float]) -> np.ndarray:
    """The image shrunk by a factor drawn from ``factor`` and enlarged back to its size.

    Images taken at a lower magnification than the model's reach it enlarged (``--scale``): the
    marks are the right size, but every edge is as soft as the original pixels were coarse and the
    fine speckle of the tissue is gone. Training at full resolution only never shows the model such
    an image; this does, with the mask unchanged.
    """
    f = float(rng.uniform(*factor))
    height, width = image.shape
    small = cv2.resize(image, (max(1, round(width / f)), max(1, round(height / f))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
