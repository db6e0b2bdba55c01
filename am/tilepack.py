"""The object format of tiles and masks in the buckets: several tiles per object, raw, no image codec.

One S3 object carries the tiles of one queue message. At GPU rates a PNG decode and an S3
request per tile cost as much as the model itself, and on a 2-core laptop the embedded
endpoint's per-request work competes with the model for the cores; so tiles travel as one
uncompressed ``.npy`` array ``(n, height, width)`` of uint8, and masks come back as one
``.npy`` array of their bits packed along the width (``numpy.packbits``), 1/8 of a byte per
pixel. Both are read with ``allow_pickle=False``, so an object can carry no code, and both are
written deterministically: the same tiles always give the same bytes, which keeps repeated
writes of an at-least-once delivery identical::

    data = pack_tiles(np.stack(tiles))                      # orchestrator -> input bucket
    tiles = unpack_tiles(data, count=8, name="s3://in/j/g/0000.npy")
    data = pack_masks(masks)                                # worker -> output bucket
    masks = unpack_masks(data, count=8, size=512, name="s3://out/j/g/0000.npy")   # 0/255 uint8
"""

from __future__ import annotations

import io
import math

import numpy as np

from am.errors import InputError
from am.messages import MAX_TILES_PER_MESSAGE

SUFFIX = ".npy"
# An object holds the tiles of one message, so no object holds more than a message may name.
MAX_TILES = MAX_TILES_PER_MESSAGE


def _write(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _check_header(data: bytes, *, name: str) -> None:
    """Refuse an object whose header claims more (or fewer) bytes than it carries, before numpy reads it.

    numpy allocates the array the header describes before it reads the data, so a damaged or
    hostile header naming a huge shape would cost that memory (or a MemoryError) instead of a
    clear error about the object.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, OSError) as exc:
        raise InputError(f"{name} is not a readable tile array ({exc}); the object is damaged or not an "
                         "am-segm tile object") from exc
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a huge shape cannot overflow here
    carried = len(data) - stream.tell()
    if expected != carried:
        raise InputError(f"{name} is not a readable tile array (its header describes a {dtype} array of shape "
                         f"{shape}, {expected} bytes, but {carried} bytes follow it); the object is damaged or not "
                         "an am-segm tile object")


def _read(data: bytes, *, name: str) -> np.ndarray:
    _check_header(data, name=name)
    try:
        array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:  # numpy's words for a truncated or foreign file
        raise InputError(f"{name} is not a readable tile array ({exc}); the object is damaged or not an "
                         "am-segm tile object") from exc
    if array.dtype != np.uint8 or array.ndim != 3:
        raise InputError(f"{name} holds a {array.dtype} array of shape {array.shape}; expected uint8 (n, h, w)")
    return array


def pack_tiles(tiles: np.ndarray) -> bytes:
    """Bytes of a ``(n, h, w)`` uint8 stack of tiles (1 <= n <= MAX_TILES)."""
    tiles = np.asarray(tiles)
    if tiles.dtype != np.uint8 or tiles.ndim != 3 or not 1 <= tiles.shape[0] <= MAX_TILES:
        raise InputError(f"cannot pack tiles of dtype {tiles.dtype} and shape {tiles.shape}: "
                         f"expected uint8 (n, h, w) with 1 <= n <= {MAX_TILES}")
    return _write(tiles)


def unpack_tiles(data: bytes, *, count: int, name: str) -> np.ndarray:
    """The ``(count, h, w)`` uint8 tiles of a tile object; InputError naming ``name`` for anything else."""
    tiles = _read(data, name=name)
    if tiles.shape[0] != count or min(tiles.shape[1:]) < 1:
        raise InputError(f"{name} holds {tiles.shape[0]} tile(s) of {tiles.shape[1]}x{tiles.shape[2]} px; "
                         f"its message names {count}")
    return tiles


def pack_masks(masks: np.ndarray) -> bytes:
    """Bytes of ``(n, h, w)`` masks (non-zero = mark), one bit per pixel."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or not 1 <= masks.shape[0] <= MAX_TILES:
        raise InputError(f"cannot pack masks of shape {masks.shape}: expected (n, h, w) with 1 <= n <= {MAX_TILES}")
    return _write(np.packbits(masks != 0, axis=-1))


def unpack_masks(data: bytes, *, count: int, size: int, name: str) -> np.ndarray:
    """The ``(count, size, size)`` 0/255 uint8 masks of a mask object; InputError naming ``name`` otherwise."""
    packed = _read(data, name=name)
    expected = (count, size, (size + 7) // 8)
    if packed.shape != expected:
        raise InputError(f"{name} holds packed masks of shape {packed.shape}; expected {expected} "
                         f"({count} mask(s) of {size}x{size} px)")
    bits = np.unpackbits(packed, axis=-1, count=size)
    return bits * np.uint8(255)


__all__ = ["MAX_TILES", "SUFFIX", "pack_masks", "pack_tiles", "unpack_masks", "unpack_tiles"]
