"""The tile and mask object format: round trips, determinism, and refusal of anything else."""

import io

import numpy as np
import pytest

from am.errors import InputError
from am.tilepack import MAX_TILES, pack_masks, pack_tiles, unpack_masks, unpack_tiles


def _tiles(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def test_tiles_round_trip_exactly_and_pack_to_the_same_bytes_every_time():
    tiles = _tiles(5)
    data = pack_tiles(tiles)
    assert pack_tiles(tiles.copy()) == data
    assert np.array_equal(unpack_tiles(data, count=5, name="t"), tiles)
    assert len(data) < tiles.nbytes + 256  # raw pixels plus a small header


@pytest.mark.parametrize("size", [64, 100, 512])
def test_masks_round_trip_as_0_255_and_take_one_bit_per_pixel(size):
    masks = (_tiles(3, size, seed=size) > 128).astype(np.uint8) * 255
    data = pack_masks(masks)
    assert pack_masks(masks > 0) == data, "any non-zero is a mark: a bool mask packs to the same bytes"
    assert len(data) < 3 * size * ((size + 7) // 8) + 256
    back = unpack_masks(data, count=3, size=size, name="m")
    assert back.dtype == np.uint8 and np.array_equal(back, masks)


def test_a_message_that_names_another_count_or_size_is_refused_naming_the_object():
    data = pack_masks(np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(InputError, match=r"s3://out/k.npy holds packed masks of shape \(2, 64, 8\); "
                                         r"expected \(3, 64, 8\)"):
        unpack_masks(data, count=3, size=64, name="s3://out/k.npy")
    with pytest.raises(InputError, match="expected"):
        unpack_masks(data, count=2, size=128, name="m")
    with pytest.raises(InputError, match="its message names 4"):
        unpack_tiles(pack_tiles(_tiles(2)), count=4, name="t")


@pytest.mark.parametrize("data", [b"", b"\x93NUMPY", b"not an array at all", b"\x89PNG\r\n\x1a\n" + bytes(40)],
                         ids=["empty", "header only", "text", "png"])
def test_damaged_or_foreign_bytes_are_refused(data):
    with pytest.raises(InputError, match="not a readable tile array"):
        unpack_tiles(data, count=1, name="t")


def test_truncated_objects_are_refused():
    data = pack_tiles(_tiles(2))
    with pytest.raises(InputError, match="not a readable tile array"):
        unpack_tiles(data[: len(data) // 2], count=2, name="t")


def test_arrays_of_other_types_or_pickled_objects_are_refused():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, 8, 8), np.float32))
    with pytest.raises(InputError, match="float32"):
        unpack_tiles(buffer.getvalue(), count=1, name="t")
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"code": "rides along"}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a readable tile array"):
        unpack_tiles(buffer.getvalue(), count=1, name="t")


@pytest.mark.parametrize("bad", [np.zeros((0, 8, 8), np.uint8), np.zeros((8, 8), np.uint8),
                                 np.zeros((1, 8, 8), np.uint16), np.zeros((MAX_TILES + 1, 2, 2), np.uint8)],
                         ids=["none", "2d", "16-bit", "too many"])
def test_packing_refuses_what_no_message_can_carry(bad):
    with pytest.raises(InputError, match="cannot pack"):
        pack_tiles(bad)


@pytest.mark.parametrize("shape", [(10**6, 10**6, 10**6), (2**40, 512, 512)], ids=["petabytes", "huge count"])
def test_a_header_claiming_a_huge_array_is_refused_before_anything_is_allocated(shape):
    """numpy allocates what the header describes before reading: a damaged header must not cost that memory."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1, 1), np.uint8))
    header["shape"] = shape
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with pytest.raises(InputError, match=r"not a readable tile array \(its header describes .* but \d+ bytes follow"):
        unpack_tiles(buffer.getvalue() + bytes(64 * 64), count=1, name="t")
