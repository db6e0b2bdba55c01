"""A stitched mask brought back to the image's size keeps apart the marks the model cut apart."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from am.mask_resize import shrink_apart
from am.model.separate import part_regions
from am.stitch import at_source_size


def components(mask: np.ndarray) -> int:
    """8-connected components, as the project counts marks."""
    return cv2.connectedComponents((mask > 0).view(np.uint8), connectivity=8)[0] - 1


def plain_resize(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """What at_source_size did to every mask before it kept marks apart."""
    out = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
    cv2.threshold(out, 127, 255, cv2.THRESH_BINARY, dst=out)
    return out


def touching_marks(height: int, width: int, count: int, seed: int) -> np.ndarray:
    """Random discs (0/255), those that overlap parted by a background line as the model parts them."""
    rng = np.random.default_rng(seed)
    regions = np.zeros((height, width), dtype=np.int32)
    for index in range(1, count + 1):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(regions, centre, int(rng.integers(3, 14)), index, -1)
    keep = part_regions(regions, np.zeros(regions.shape, dtype=np.float32))
    return keep.astype(np.uint8) * 255


def reference(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """shrink_apart written plainly, pixel by pixel, with the marks labelled over the whole mask."""
    big_h, big_w = mask.shape
    values = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.int64)
    _, labels = cv2.connectedComponents((mask > 127).view(np.uint8), connectivity=8)

    def support(i: int, size: int, big: int) -> list[int]:
        centre = (i + 0.5) * big / size - 0.5
        low = min(max(int(np.floor(centre)), 0), big - 1)
        high = min(low + 1, big - 1)
        return [high, low] if centre >= 0 and centre - np.floor(centre) >= 0.5 else [low, high]

    anchors = np.zeros((height, width), dtype=np.int64)
    for y in range(height):
        ys = support(y, height, big_h)
        for x in range(width):
            xs = support(x, width, big_w)
            for ty, tx in ((ys[0], xs[0]), (ys[0], xs[1]), (ys[1], xs[0]), (ys[1], xs[1])):
                if labels[ty, tx]:
                    anchors[y, x] = labels[ty, tx]
                    break
    fg = values > 127
    drop = np.zeros_like(fg)
    for y in range(height):
        for x in range(width):
            for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                v, u = y + dy, x + dx
                if v < height and 0 <= u < width and fg[y, x] and fg[v, u] and anchors[y, x] != anchors[v, u]:
                    drop[y, x] |= values[y, x] <= values[v, u]
                    drop[v, u] |= values[v, u] <= values[y, x]
    return np.where(fg & ~drop, 255, 0).astype(np.uint8)


@pytest.mark.parametrize("factor", [2.0, 2.04, 3.0])
@pytest.mark.parametrize("vertical", [False, True])
def test_marks_parted_by_a_one_pixel_line_stay_apart(factor: float, vertical: bool) -> None:
    size = round(120 / factor)
    joined = 0
    for line in range(56, 60):  # wherever the line falls between the resize's samples
        mask = np.zeros((120, 120), dtype=np.uint8)
        mask[40:70, line - 30 : line] = 255
        mask[40:70, line + 1 : line + 31] = 255
        if vertical:
            mask = np.ascontiguousarray(mask.T)
        assert components(mask) == 2
        joined += components(plain_resize(mask, size, size)) == 1
        assert components(at_source_size(mask.copy(), size, size)) == 2
    assert joined  # the plain resize joins them for some of these places


@pytest.mark.parametrize("factor", [2.0, 2.04, 3.0, 3.7])
def test_diagonal_line_keeps_marks_apart(factor: float) -> None:
    yy, xx = np.mgrid[0:160, 0:160]
    mask = np.where(((yy - 80) ** 2 + (xx - 80) ** 2 < 50**2) & (abs(yy - xx) > 1), 255, 0).astype(np.uint8)
    assert components(mask) == 2
    size = round(160 / factor)
    assert components(at_source_size(mask, size, size)) == 2


@pytest.mark.parametrize("factor", [1.3, 2.0, 2.04, 3.0, 3.7])
def test_only_pixels_between_marks_go(factor: float) -> None:
    mask = touching_marks(300, 260, 250, seed=1)
    height, width = round(300 / factor), round(260 / factor)
    before = plain_resize(mask, height, width)
    after = at_source_size(mask.copy(), height, width)
    assert not np.any(after & ~before)  # nothing is added
    # A mark alone keeps exactly the outline the plain resize gives it.
    lone = np.zeros((300, 260), dtype=np.uint8)
    cv2.circle(lone, (130, 150), 40, 255, -1)
    assert np.array_equal(at_source_size(lone.copy(), height, width), plain_resize(lone, height, width))


@pytest.mark.parametrize("factor", [1.5, 2.0, 2.04, 3.0, 3.7])
def test_no_two_marks_share_a_component(factor: float) -> None:
    mask = touching_marks(400, 360, 500, seed=2)
    _, tile_labels = cv2.connectedComponents((mask > 0).view(np.uint8), connectivity=8)
    height, width = round(400 / factor), round(360 / factor)
    out = at_source_size(mask.copy(), height, width)
    _, out_labels = cv2.connectedComponents((out > 0).view(np.uint8), connectivity=8)
    # The mark under each source pixel's centre, where one is: a component holds pixels of one mark.
    rows = np.floor((np.arange(height) + 0.5) * 400 / height).astype(int)
    cols = np.floor((np.arange(width) + 0.5) * 360 / width).astype(int)
    under = tile_labels[np.ix_(rows, cols)]
    both = (out_labels > 0) & (under > 0)
    owners: dict[int, set[int]] = {}
    for source_label, tile_label in zip(out_labels[both].tolist(), under[both].tolist(), strict=True):
        owners.setdefault(source_label, set()).add(tile_label)
    assert max(len(marks) for marks in owners.values()) == 1
    assert components(out) > components(plain_resize(mask, height, width))


@pytest.mark.parametrize("factor", [2.0, 2.04, 3.0])
def test_matches_a_plain_whole_image_reference(factor: float) -> None:
    mask = touching_marks(150, 130, 90, seed=3)
    height, width = round(150 / factor), round(130 / factor)
    assert np.array_equal(shrink_apart(mask.copy(), height, width), reference(mask, height, width))


@pytest.mark.parametrize("factor", [1.3, 2.0, 2.04, 3.0, 3.7])
def test_blocks_give_the_whole_image_result(factor: float) -> None:
    mask = touching_marks(900, 700, 2500, seed=4)
    height, width = round(900 / factor), round(700 / factor)
    whole = shrink_apart(mask.copy(), height, width, block_pixels=10**12, margin=10**6)
    for block_pixels in (700, 5000, 60000):
        assert np.array_equal(shrink_apart(mask.copy(), height, width, block_pixels=block_pixels), whole)


@pytest.mark.parametrize("shape", [(200, 180), (400, 360), (300, 200)])
def test_masks_not_shrunk_come_out_as_before(shape: tuple[int, int]) -> None:
    mask = touching_marks(200, 180, 150, seed=5)
    mask[::7, ::5] = 100  # values other than 0 and 255 are cut as before too
    expected = plain_resize(mask, *shape) if shape != mask.shape else np.where(mask > 0, 255, 0).astype(np.uint8)
    out = at_source_size(mask.copy(), *shape)
    assert out.dtype == np.uint8 and out.shape == shape
    assert np.array_equal(out, expected)


def test_same_size_is_cut_in_place() -> None:
    mask = touching_marks(120, 100, 40, seed=6)
    assert at_source_size(mask, 120, 100) is mask
