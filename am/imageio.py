"""Image I/O stage: read source images, write results atomically, encode and decode tiles.

Sources are TIFF (read with tifffile) or PNG (read with OpenCV), grey or RGB(A), 8- or 16-bit
or floating point. Arrays are returned as stored, with colour in RGB(A) order whatever the
library underneath uses. Writes go to a temporary file in the target folder that is renamed
into place, so a reader never sees half a file; PNG bytes are deterministic so a worker that
processes a tile twice writes the same object twice::

    image = read_image(Path("source/g1/scan.tif"))   # (H, W) uint16, say
    header = read_header(path)                       # size, channels, dtype: no pixel decoded
    write_png(Path("out/mask.png"), mask)
    data = encode_png(tile)                          # bytes for S3
    tile = decode_png(data, name="job/g1/0007.png")  # (T, T) uint8
"""

from __future__ import annotations

import logging
import math
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import tifffile

from am.dataset import png_conversion
from am.errors import InputError
from am.files import atomic_output, write_atomic

log = logging.getLogger(__name__)

MAX_PIXELS = 40000 * 40000
# OpenCV refuses to decode images above 2**30 pixels (CV_IO_MAX_IMAGE_PIXELS); larger sources must be TIFF.
OPENCV_MAX_PIXELS = 1 << 30
MAX_CHANNELS = 4
PNG_SUFFIXES = (".png",)
TIFF_SUFFIXES = (".tif", ".tiff")
# zlib level 3: masks and tiles shrink well, and encoding stays fast. Fixed, so bytes are reproducible.
PNG_COMPRESSION = 3
# libpng's row filters, by name. "adaptive" (libpng's default) tries every filter on every row
# and keeps the best: on microscopy and masks it buys a few per cent of size for up to four
# times the encoding time, which large overlays and hundreds of tiles per run pay over and over.
# OpenCV below 4.11 cannot choose a filter; there every name encodes as "adaptive".
PNG_ROW_FILTERS = ("adaptive", "none", "sub", "up", "paeth")
TIFF_COMPRESSION_LEVEL = 1
# TIFF compression (tag 259) 7: each strip or tile a whole JPEG stream, which ends with the EOI marker.
COMPRESSION_JPEG = 7
_JPEG_END = b"\xff\xd9"
# How far before a JPEG segment's stated end its end marker may lie (padding some writers add).
_JPEG_TAIL = 64
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# How TIFF files begin: classic and BigTIFF, little- and big-endian.
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# How JPEG files begin: the start-of-image marker, then the first segment's marker.
JPEG_SIGNATURE = b"\xff\xd8\xff"
# In the IHDR chunk, after width and height: bit depth 8, colour type 0 (grey).
_PNG_GREY_8BIT = b"\x08\x00"
_WRITABLE_PNG_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
# PNG colour type (IHDR) -> channels OpenCV returns with IMREAD_UNCHANGED: grey, RGB, palette (RGB,
# or RGBA with transparency), grey + alpha (expanded to BGRA), RGBA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}
_PNG_BIT_DEPTHS = (1, 2, 4, 8, 16)
# What tifffile raises for a file whose structure (header, tags, offsets) is damaged. TypeError and
# ArithmeticError are among them: a tag with more values than the field takes comes back as a
# tuple where a number is expected, a missing TileLength divides by zero. Caught only around
# tifffile's own calls, so a bug of ours is not renamed.
_TIFF_STRUCTURE_ERRORS = (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError, struct.error, TypeError,
                          ArithmeticError)
# What decoding damaged pixel data raises, besides imagecodecs' own errors (see _is_codec_error):
# zlib.error where tifffile falls back to the standard library, the others from tifffile itself.
_TIFF_DECODE_ERRORS = (*_TIFF_STRUCTURE_ERRORS, zlib.error)


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, read without decoding a pixel.

    Lets a server refuse an image that would take too much memory to decode (a few compressed
    bytes can declare gigabytes of pixels) before it decodes it. ``channels`` and ``dtype`` are
    what :func:`read_image`'s decoder returns before any conversion; ``read_as`` says what
    :func:`read_image` turns that into where it differs ("3 channel(s) of uint16" for palette
    colour, "1 channel(s) of float32" for float16 grey), else None. ``decoded_bytes`` is the memory
    that reading takes at least: the decoder's pixels, plus the array :func:`read_image` converts them
    into where the two are held at once (palette indices and their colours, float16 and its float32,
    planar channels and their interleaved copy), plus what tifffile holds while it unpacks samples of
    fewer than 8 bits (a 1-bit TIFF in one strip: twice its pixels). ``pages`` counts full-size image planes.
    """

    height: int
    width: int
    channels: int
    dtype: np.dtype
    decoded_bytes: int
    pages: int = 1
    read_as: str | None = None


def read_image(path: Path) -> np.ndarray:
    """Read one TIFF or PNG image as stored: (H, W) grey or (H, W, 3|4) RGB(A).

    Integer dtypes are kept (uint8, uint16, int16, ...); floating-point data becomes float32;
    a 1-bit image becomes uint8 0/255. Raises InputError, naming the file and the fix, for a
    missing, empty, unreadable or unsupported file, a multi-page TIFF, an empty image, more
    than four channels or more than MAX_PIXELS pixels.
    """
    path = _existing_image(Path(path))
    image = _read_tiff(path) if path.suffix.lower() in TIFF_SUFFIXES else _read_png(path)
    return _as_stored(image, path)


def _existing_image(path: Path) -> Path:
    """``path``, if it is a non-empty file with a TIFF or PNG suffix; else InputError saying what to do."""
    if not path.exists():
        raise InputError(f"image {path} does not exist; check the path", reason="it does not exist")
    if not path.is_file():
        raise InputError(f"image {path} is not a file; give the path of one .tif, .tiff or .png image")
    if path.stat().st_size == 0:
        raise InputError(f"image {path} is empty (0 bytes); copy the image again", reason="it is empty (0 bytes)")
    if path.suffix.lower() not in TIFF_SUFFIXES + PNG_SUFFIXES:
        raise InputError(
            f"image {path} has unsupported extension {path.suffix!r}; convert it to TIFF (.tif/.tiff) or PNG"
        )
    _check_signature(path)
    return path


def _check_signature(path: Path) -> None:
    """InputError when the file's first bytes are the other format's than its suffix says, or a JPEG's.

    The reader is chosen by the suffix, and each would only say that the file is not its format
    (a PNG exported as scan.tif), where renaming it is all it takes. A JPEG saved under a .tif or
    .png name is said to be one, with the command that converts it: renaming would not do, since
    JPEG is not read at all (lossy, and 8-bit only).
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(len(PNG_SIGNATURE))
    except OSError as exc:
        raise _unreadable_file(path, exc) from exc
    if head.startswith(JPEG_SIGNATURE):
        # cv2.imread goes by the bytes, not the suffix: the conversion reads this file as the JPEG it is.
        keep = (f"then remove {path.name}, keeping only {path.with_suffix('.png').name}"
                if path.suffix.lower() != ".png" else "which rewrites it in place as a real PNG")
        raise InputError(f"image {path} is a JPEG file, not the {path.suffix} its name says, and JPEG is not read "
                         f"(only lossless TIFF and PNG are): convert it to PNG, e.g. {png_conversion(path)}, "
                         f"{keep}; better, export the image again as TIFF or PNG from the original",
                         reason=f"it is a JPEG file named {path.suffix}")
    if path.suffix.lower() in TIFF_SUFFIXES and head.startswith(PNG_SIGNATURE):
        found, suffix = "PNG", ".png"
    elif path.suffix.lower() in PNG_SUFFIXES and head[:4] in TIFF_SIGNATURES:
        found, suffix = "TIFF", ".tif"
    else:
        return
    raise InputError(f"image {path} is a {found} file, not the {path.suffix} its name says: rename it to "
                     f"{path.with_suffix(suffix).name}", reason=f"it is a {found} file named {path.suffix}")


def _unreadable_file(path: Path, exc: OSError) -> InputError:
    """The error for a file whose bytes cannot be read at all (permissions, a vanished disk)."""
    return InputError(f"image {path} cannot be read ({exc}); check its permissions, or copy it again")


def _check_size(path: Path, height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise InputError(f"image {path} has no pixels ({height} x {width}); re-export the image")
    if height * width > MAX_PIXELS:
        raise InputError(
            f"image {path} is {height} x {width} = {height * width} pixels, above the limit of "
            f"{MAX_PIXELS} (40000 x 40000); crop or split the acquisition into several images"
        )


def _png_size(header: bytes) -> tuple[int, int] | None:
    """(height, width) from the first 24 bytes of a PNG, or None when they are not a PNG's header."""
    if len(header) < 24 or not header.startswith(PNG_SIGNATURE) or header[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", header[16:24])
    return int(height), int(width)


# What a PNG's header tells before any pixel: signature, IHDR's length and type, width, height,
# bit depth and colour type.
_PNG_HEAD = 26


def _png_head(path: Path) -> tuple[bytes, tuple[int, int]]:
    """The PNG's first :data:`_PNG_HEAD` bytes and its (height, width); InputError when they are not a PNG's."""
    with path.open("rb") as handle:
        head = handle.read(_PNG_HEAD)
    size = _png_size(head[:24])
    if size is None or len(head) < _PNG_HEAD:
        raise _not_png(path, head)
    return head, size


def _not_png(path: Path, head: bytes) -> InputError:
    """Why ``head`` (a file's first bytes) gives no PNG size: a file cut inside its header, or no PNG at all."""
    if len(head) < _PNG_HEAD and head[:8] == PNG_SIGNATURE[: len(head[:8])]:
        return InputError(f"image {path} is truncated: it ends at byte {len(head)}, inside its PNG header; copy or "
                          "export it again", reason=f"it is truncated inside its PNG header ({len(head)} bytes)")
    return InputError(f"image {path} is not a PNG file (bad signature); re-export it as PNG or TIFF",
                      reason="it is not a PNG file (bad signature)")


def is_grey_8bit_png(data: bytes) -> bool:
    """Whether ``data`` declares itself a grey 8-bit PNG (the header only; decoding still checks the rest)."""
    return _png_size(data[:24]) is not None and data[24:26] == _PNG_GREY_8BIT


def read_header(path: Path) -> ImageHeader:
    """The size, channels, pixel type and page count of a TIFF or PNG, from its header alone.

    Raises InputError, naming the file and the fix, for a missing, empty or unsupported file or
    a header that cannot be read; the pixel data is neither read nor checked.
    """
    path = _existing_image(Path(path))
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        with _open_tiff(path) as tif:
            return _tiff_page(tif, path)[1]
    try:
        head, size = _png_head(path)
    except OSError as exc:
        raise _unreadable_file(path, exc) from exc
    bit_depth, colour_type = head[24:26]
    if bit_depth not in _PNG_BIT_DEPTHS or colour_type not in _PNG_CHANNELS:
        raise InputError(f"image {path} has a damaged PNG header (bit depth {bit_depth}, colour type "
                         f"{colour_type}); copy or export it again")
    dtype = np.dtype(np.uint16 if bit_depth == 16 else np.uint8)
    channels = _PNG_CHANNELS[colour_type]
    height, width = size
    _check_png_size(path, height, width)  # from the header, so before any worker starts
    try:
        _check_png_frames(path)
    except OSError as exc:
        raise _unreadable_file(path, exc) from exc
    return ImageHeader(height=height, width=width, channels=channels, dtype=dtype,
                       decoded_bytes=height * width * channels * dtype.itemsize)


# PNG chunks are read and their CRCs checked this many bytes at a time: one chunk may hold the whole image.
_PNG_CHECK_BLOCK = 1 << 20


def check_complete(path: Path) -> None:
    """InputError naming ``path`` if the file is cut short or, for a PNG, damaged anywhere.

    Run before a pipeline's backend and workers start, so that a copy or upload cut short, or a
    PNG with a flipped bit, is refused in moments instead of once its pixels are decoded (where
    libpng also prints its own line). A TIFF's end is checked from its header alone (where its
    pixel data must end); a PNG is read through once and every chunk's CRC checked, no pixel
    decoded (64 MB in 0.04 s on the 2-core test machine, a sixth of decoding it). Damage inside a
    TIFF's pixel data is still found by :func:`read_image`. What a TIFF's header shows that
    :func:`read_image` refuses (several planes, CMYK) is refused here too, and an EXIF orientation
    is warned about here, before any work rather than once other groups are done.
    """
    path = _existing_image(Path(path))
    if path.suffix.lower() in TIFF_SUFFIXES:
        with _open_tiff(path) as tif:
            page, header = _tiff_page(tif, path)
            # An image that would be refused (too large, several planes, CMYK) is refused as such, not checked.
            _check_tiff_header(path, page, header)
            _check_tiff_complete(path, page)
            _warn_orientation(path, _tiff_orientation(page))
        return
    read_header(path)  # a damaged header, or a PNG too large to read, is named as such, not walked
    problem = _png_damage(path)
    if problem is not None:
        raise InputError(f"image {path} is {problem}; copy or export it again")
    _warn_orientation(path, _png_orientation(path))


def _check_tiff_complete(path: Path, page: tifffile.TiffPage) -> None:
    """InputError if the pixel data of ``page`` (of the open TIFF ``path``) lies past the file's end, as far
    as that is certain without decoding.

    A segment that starts at or past the end of the file is missing. Where the file is cut inside
    a segment, the bytes an uncompressed strip needs are known exactly; a compressed one is left to
    the decoder, since some writers overstate the last strip's byte count and decoders read only
    what its rows take. JPEG is the exception: libjpeg only warns where a segment ends early and
    fills the missing rows with flat grey, so each segment must lie whole in the file and end with
    the JPEG end-of-image marker.
    """
    size = path.stat().st_size
    try:
        offsets, counts = list(page.dataoffsets), list(page.databytecounts)
        needed = [_strip_bytes(page, index, int(count)) for index, count in enumerate(counts)]
    except _TIFF_STRUCTURE_ERRORS as exc:
        raise _unreadable_tiff(path, exc) from exc
    if len(offsets) != len(counts):
        raise InputError(f"image {path} cannot be read as TIFF: its header lists {len(offsets)} pixel data offsets "
                         f"but {len(counts)} byte counts; the file is damaged, copy or export it again")
    end = max((int(offset) + take for offset, count, take in zip(offsets, counts, needed, strict=True) if count),
              default=0)
    if end > size:
        raise InputError(f"image {path} is truncated: its pixel data runs to byte {end}, but the file ends at "
                         f"byte {size}; copy or export it again")
    if page.compression == COMPRESSION_JPEG:
        _check_jpeg_ends(path, offsets, counts)


def _check_jpeg_ends(path: Path, offsets: list[int], counts: list[int]) -> None:
    """InputError if a JPEG segment (each a whole JPEG stream, lying inside the file) holds no end-of-image
    marker in its last :data:`_JPEG_TAIL` bytes: the file was cut, or its end never written (a download
    preallocated with zeros). A few bytes of padding after the marker, which some writers leave, pass.
    A few bytes read per segment, so even tens of thousands of tiles take moments."""
    with path.open("rb") as handle:
        for offset, count in zip(offsets, counts, strict=True):
            if not count:
                continue
            tail = min(int(count), _JPEG_TAIL)
            handle.seek(int(offset) + int(count) - tail)
            if _JPEG_END not in handle.read(tail):
                raise InputError(f"image {path} is truncated: its JPEG-compressed pixel data at byte {int(offset)} "
                                 f"does not end with the JPEG end marker (bytes {int(offset)} to "
                                 f"{int(offset) + int(count)}); copy or export it again")


def _strip_bytes(page: tifffile.TiffPage, index: int, count: int) -> int:
    """The bytes of segment ``index`` a decoder must read: all of an uncompressed strip's rows (the last
    strip of a plane holds only the rows left) or an uncompressed tile, all of a JPEG stream (whose
    decoder does not fail where it is cut), else 1 (only its start is certain)."""
    if page.compression == COMPRESSION_JPEG:
        return count
    if count == 0 or page.compression != 1 or int(page.bitspersample) % 8:
        return min(count, 1)
    separate = page.planarconfig == 2
    sample_bytes = (1 if separate else int(page.samplesperpixel)) * int(page.bitspersample) // 8
    if page.is_tiled:  # every tile is stored whole, edge tiles padded
        return min(count, int(page.tilewidth) * int(page.tilelength) * max(1, int(page.tiledepth)) * sample_bytes)
    row_bytes = int(page.imagewidth) * sample_bytes
    rows_per_strip = max(1, min(int(page.rowsperstrip), int(page.imagelength)))
    strips_per_plane = -(-int(page.imagelength) // rows_per_strip)
    rows = min(rows_per_strip, int(page.imagelength) - (index % strips_per_plane) * rows_per_strip)
    return min(count, rows * row_bytes)


def _png_damage(path: Path) -> str | None:
    """What is wrong with the PNG's chunks (cut short, a critical chunk's CRC that does not match), or None.

    As libpng: a bad CRC in an ancillary chunk (text, colour profile, ...) or in IEND is no damage
    (it warns and decodes), nor are bytes after the IEND chunk, which some writers add.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        offset = handle.seek(len(PNG_SIGNATURE))
        while True:
            head = handle.read(8)
            if len(head) < 8:
                return f"truncated: it stops at byte {size}, before the end of its PNG data (no IEND chunk)"
            length, kind = struct.unpack(">I4s", head)
            name = kind.decode("latin-1")
            if offset + 12 + length > size:
                return f"truncated: its {name!r} chunk at byte {offset} runs past the end of the file ({size} bytes)"
            crc = zlib.crc32(kind)
            left = length
            while left:
                block = handle.read(min(left, _PNG_CHECK_BLOCK))
                if not block:  # the file shrank since its size was read (copied over while it is checked)
                    return f"truncated: its {name!r} chunk at byte {offset} runs past the end of the file"
                crc = zlib.crc32(block, crc)
                left -= len(block)
            critical = name[:1].isupper() and kind != b"IEND"
            if handle.read(4) != struct.pack(">I", crc) and critical:
                return f"damaged: its {name!r} chunk at byte {offset} fails its CRC check"
            if kind == b"IEND":
                return None
            offset += 12 + length


def header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of a TIFF or PNG from its header alone, or None when the header cannot tell.

    For estimates made before the pixels are needed; a file this cannot read is reported, with
    the fix, by :func:`read_image`.
    """
    try:
        header = read_header(path)
    except InputError as exc:
        log.debug("cannot read the size of %s from its header (%s)", path, exc)
        return None
    return header.height, header.width


def _check_png_size(path: Path, height: int, width: int) -> None:
    _check_size(path, height, width)
    if height * width > OPENCV_MAX_PIXELS:
        raise InputError(
            f"image {path} is {height} x {width} pixels, too large to decode as PNG (limit {OPENCV_MAX_PIXELS}); "
            "save it as TIFF instead"
        )


def _read_png(path: Path) -> np.ndarray:
    height, width = _png_head(path)[1]
    _check_png_size(path, height, width)
    _check_png_frames(path)
    _warn_orientation(path, _png_orientation(path))
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        # Walked only on failure (check_complete walks it up front where a run is at stake): where it went wrong.
        problem = _png_damage(path) or "not decodable as PNG (truncated or corrupt)"
        raise InputError(f"image {path} is {problem}; copy or export it again", reason=f"it is {problem}")
    if image.ndim == 3 and image.shape[2] in (3, 4):
        _to_rgb_in_place(image)
    return image


def _to_rgb_in_place(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) ``image`` turned into RGB(A) in its own memory, a row block at a time: a whole
    converted copy would double what :func:`read_header` says decoding takes."""
    code = cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
    step = max(1, (1 << 20) // max(1, image[0].nbytes))  # 1 MiB of temporary at most (or one row)
    for r0 in range(0, image.shape[0], step):
        image[r0:r0 + step] = cv2.cvtColor(image[r0:r0 + step], code)
    return image


# TIFF photometric interpretations read specially (TIFF 6.0, tag 262).
PHOTOMETRIC_MINISWHITE = 0
PHOTOMETRIC_PALETTE = 3
PHOTOMETRIC_SEPARATED = 5
PHOTOMETRIC_YCBCR = 6
# Grey (0 is white or black), RGB and palette colour: read as intensities or turned into them.
_READ_PHOTOMETRICS = (PHOTOMETRIC_MINISWHITE, 1, 2, PHOTOMETRIC_PALETTE)
# What the others are, for the message that refuses them: their samples are not RGB, and read as RGB
# they come out as another picture (YCbCr's luminance weighted as RGB is its negative).
_OTHER_PHOTOMETRICS = {PHOTOMETRIC_SEPARATED: "CMYK", PHOTOMETRIC_YCBCR: "YCbCr", 8: "CIELab", 9: "ICCLab",
                       10: "ITULab", 32803: "colour filter array (raw Bayer)", 32844: "LogL", 32845: "LogLuv",
                       34892: "linear raw"}


def _check_tiff_header(path: Path, page: tifffile.TiffPage, header: ImageHeader) -> int:
    """InputError for what the TIFF's header shows cannot be read: several full-size planes, too many
    pixels, CMYK; else the page's photometric interpretation.

    Called by :func:`check_complete` as well as :func:`_read_tiff`, so that a pipeline refuses such
    a file before any worker starts, not after other groups were cut and sent.
    """
    if header.pages != 1:
        raise InputError(
            f"image {path} is a {'multi-page TIFF' if len(page.parent.pages) > 1 else 'TIFF stack'} with "
            f"{header.pages} full-size image planes; am-segm reads "
            "one image per file: save the plane to segment as its own TIFF"
        )
    _check_size(path, header.height, header.width)
    photometric = _tag_int(page, "photometric", path)
    # A JPEG-compressed YCbCr TIFF is decoded to RGB by the JPEG codec itself; no other reader here converts.
    if photometric not in _READ_PHOTOMETRICS and not (photometric == PHOTOMETRIC_YCBCR
                                                      and page.compression == COMPRESSION_JPEG):
        kind = _OTHER_PHOTOMETRICS.get(photometric, f"photometric {photometric} (neither grey nor RGB)")
        raise InputError(f"image {path} is a {kind} TIFF; export it as grey or RGB")
    return photometric


def _read_tiff(path: Path) -> np.ndarray:
    with _open_tiff(path) as tif:
        page, header = _tiff_page(tif, path)
        photometric = _check_tiff_header(path, page, header)
        if page.compression == COMPRESSION_JPEG:
            _check_tiff_complete(path, page)  # a JPEG segment cut short decodes as flat grey, with only a warning
        _warn_orientation(path, _tiff_orientation(page))
        bits = _tag_int(page, "bitspersample", path)
        try:
            axes = page.axes
            colormap = page.colormap if photometric == PHOTOMETRIC_PALETTE else None
        except _TIFF_STRUCTURE_ERRORS as exc:
            raise _unreadable_tiff(path, exc) from exc
        if colormap is not None and (colormap.ndim != 2 or colormap.shape[0] != 3):
            raise InputError(f"image {path} has a damaged colour map (shape {colormap.shape}, not 3 x N); "
                             "export it as grey or RGB")
        image = _decode_tiff(page, path)
    if axes == "SYX":
        # Planar (channel-first) storage: turn it into the usual (H, W, C).
        image = np.moveaxis(image, 0, -1)
    elif axes not in ("YX", "YXS"):
        raise InputError(
            f"image {path} holds a {image.ndim}-D stack (axes {axes}); save a single 2-D plane as its own TIFF"
        )
    if photometric == PHOTOMETRIC_MINISWHITE and image.dtype != np.bool_:
        # A grey image stored with 0 as white: turn it the usual way round, or dark marks would read as
        # bright. One-bit images are masks, whose set bits mean "mark" however they are displayed
        # (tifffile itself writes boolean arrays this way), so they are kept as stored.
        # In place: no full-size copy of a 20000 px image (read_header counts none).
        if np.issubdtype(image.dtype, np.unsignedinteger):
            top = image.dtype.type(min((1 << bits) - 1, np.iinfo(image.dtype).max))
            image = np.subtract(top, image, out=image)
        else:
            image = np.subtract(image.max(), image, out=image)
    elif colormap is not None and image.ndim == 2:
        # Palette colour: the pixels are indices into the colour map, not intensities.
        if image.max() >= colormap.shape[1]:
            raise InputError(f"image {path} has palette indices beyond its {colormap.shape[1]}-entry colour map; "
                             "export it as grey or RGB")
        image = np.ascontiguousarray(np.moveaxis(colormap[:, image], 0, -1))
    return image


# EXIF/TIFF Orientation (tag 274): 1 is as stored; 2 to 8 are mirrorings and rotations a viewer applies.
ORIENTATION_TAG = 274
_TURNED_ORIENTATIONS = {2: "mirrored left to right", 3: "turned by 180 degrees", 4: "mirrored top to bottom",
                        5: "turned by 90 degrees and mirrored", 6: "turned by 90 degrees clockwise",
                        7: "turned by 90 degrees and mirrored", 8: "turned by 90 degrees counter-clockwise"}


@lru_cache(maxsize=256)
def _warn_orientation(path: Path, orientation: int | None) -> None:
    """Warn that the image has an EXIF orientation that am-segm does not apply.

    Not rotated: the marks' grid, --rows/--cols and the coordinates written all refer to the pixels as
    stored, and a viewer that applies the orientation shows another grid (rows and columns swapped
    by a quarter turn). Cached, so a file that :func:`check_complete` and :func:`read_image` both see
    is named once; bounded, so a server reading many uploads keeps no growing record.
    """
    if orientation not in _TURNED_ORIENTATIONS:  # 1, none, or a value no viewer applies
        return
    log.warning("image %s has EXIF orientation %d: viewers show it %s, but am-segm reads its pixels as stored; "
                "count --rows/--cols on the image as stored, not as a viewer shows it", path, orientation,
                _TURNED_ORIENTATIONS[orientation])


def _tiff_orientation(page: tifffile.TiffPage) -> int | None:
    """The page's Orientation tag, or None where it has none (or a damaged one, which no viewer applies)."""
    tag = page.tags.get(ORIENTATION_TAG)
    value = None if tag is None else tag.value
    return int(value) if isinstance(value, (int, np.integer)) else None


def _png_orientation(path: Path) -> int | None:
    """The orientation in the PNG's eXIf chunk, or None where it has none."""
    data = _png_chunk_before_data(path, b"eXIf")
    return None if data is None else _exif_orientation(data)


def _check_png_frames(path: Path) -> None:
    """Refuse an animated PNG (APNG): the decoder returns its first frame alone, without a word, where a
    TIFF of several planes is refused. Its acTL chunk, which precedes the image data, counts the frames."""
    data = _png_chunk_before_data(path, b"acTL")
    frames = struct.unpack(">I", data[:4])[0] if data is not None and len(data) >= 4 else 1
    if frames > 1:
        raise InputError(f"image {path} is an animated PNG with {frames} frames; am-segm reads one image per file: "
                         "save the frame to segment as its own PNG")


def _png_chunk_before_data(path: Path, wanted: bytes) -> bytes | None:
    """The data of the PNG's first ``wanted`` chunk, or None where none precedes the image data.

    Only chunk headers are read, up to the image data, which the PNG specification has eXIf and acTL
    precede; a damaged chunk list stops the search (it is named by :func:`check_complete` or the decoder).
    """
    with path.open("rb") as handle:
        handle.seek(len(PNG_SIGNATURE))
        while len(head := handle.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                return None
            if kind == wanted:
                return handle.read(length)
            handle.seek(length + 4, 1)  # the data and CRC
    return None


def _exif_orientation(data: bytes) -> int | None:
    """The Orientation entry of an EXIF block's first IFD (a TIFF header and IFD, as the eXIf chunk holds),
    or None where there is none or the block is damaged."""
    if data.startswith(b"Exif\x00\x00"):  # some writers keep the prefix the JPEG APP1 segment has
        data = data[6:]
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8:
        return None
    ifd = struct.unpack(f"{order}I", data[4:8])[0]
    if ifd + 2 > len(data):
        return None
    for index in range(struct.unpack(f"{order}H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * index
        if entry + 12 > len(data):
            return None
        tag, kind = struct.unpack(f"{order}HH", data[entry:entry + 4])
        if tag == ORIENTATION_TAG:
            return struct.unpack(f"{order}H", data[entry + 8:entry + 10])[0] if kind == 3 else None  # 3: SHORT
    return None


def _open_tiff(path: Path) -> tifffile.TiffFile:
    """The TIFF open for reading its header; InputError naming the file where its structure is damaged."""
    try:
        return tifffile.TiffFile(path)
    except _TIFF_STRUCTURE_ERRORS as exc:
        raise _unreadable_tiff(path, exc) from exc


def _tiff_page(tif: tifffile.TiffFile, path: Path) -> tuple[tifffile.TiffPage, ImageHeader]:
    """The first full-size page and what its header says; InputError for a damaged or unsupported header."""
    try:
        # Reduced-resolution pages (thumbnails, pyramid levels) repeat the image and transparency masks
        # go with it: only full ones count. Some writers leave a thumbnail unflagged, so the image is
        # the largest page, and only pages of its size are further planes.
        pages = [page for page in tif.pages if isinstance(page, tifffile.TiffPage)
                 and not getattr(page, "is_reduced", False) and not getattr(page, "is_mask", False)]
        if not pages:
            raise InputError(f"image {path} holds no readable image plane; copy or export it again")
        page = max(pages, key=_page_pixels)
        others = [other for other in pages if _page_pixels(other) != _page_pixels(page)]
        pages = [other for other in pages if _page_pixels(other) == _page_pixels(page)]
        planes = max(len(pages), _series_planes(tif, page))
        _warn_other_images(path, _page_pixels(page), tuple(sorted({(_page_pixels(other), f"{other.imagewidth} x "
                                                                    f"{other.imagelength}") for other in others})))
        height = _tag_int(page, "imagelength", path)
        width = _tag_int(page, "imagewidth", path)
        channels = _tag_int(page, "samplesperpixel", path)
        if page.dtype is None:
            raise InputError(f"image {path} has a pixel type no reader here decodes (sample format "
                             f"{_shown(page.sampleformat)}, {_shown(page.bitspersample)} bits); export it as 8- "
                             "or 16-bit integer")
        decoded_bytes, read_as = _tiff_reading(page, height, width, channels)
    except _TIFF_STRUCTURE_ERRORS as exc:
        raise _unreadable_tiff(path, exc) from exc
    return page, ImageHeader(height=height, width=width, channels=channels, dtype=np.dtype(page.dtype),
                             decoded_bytes=decoded_bytes, pages=planes, read_as=read_as)


def _series_planes(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> int:
    """How many planes the series that begins with ``page`` holds, by its shape.

    ImageJ stores a stack over 4 GB, and tifffile one written with ``truncate=True``, as one page whose
    metadata gives the stack's shape: counted by pages it would pass for a single image, and its first
    plane be segmented without a word.
    """
    for series in tif.series:
        first = series.pages[0] if len(series.pages) else None
        if first is not None and getattr(first, "offset", None) == page.offset:
            return math.prod(size for size, axis in zip(series.shape, series.axes, strict=True) if axis not in "YXS")
    return 1


# An image this share of the one read, or larger, is no thumbnail: said to be left unread.
_OTHER_IMAGE_SHARE = 0.25


@lru_cache(maxsize=256)
def _warn_other_images(path: Path, pixels: int, others: tuple[tuple[int, str], ...]) -> None:
    """Warn of images in the file, other than the one read, too large to be its thumbnail (an OME-TIFF of
    several scenes): only the largest is segmented. Cached, as :func:`_warn_orientation` is."""
    shown = [size for other_pixels, size in others if other_pixels >= _OTHER_IMAGE_SHARE * pixels]
    if shown:
        log.warning("image %s holds %d other image(s) (%s, width x height) besides the largest, which alone is "
                    "segmented; save each image to segment as its own TIFF", path, len(shown), ", ".join(shown))


def _tiff_reading(page: tifffile.TiffPage, height: int, width: int, channels: int) -> tuple[int, str | None]:
    """What :func:`read_image` holds at once while it reads ``page`` (bytes, from the header alone), and what
    it returns where that is not the stored channels and dtype (see :class:`ImageHeader`).

    As :func:`_read_tiff` and :func:`_as_stored` convert: palette indices into colours of the colour map's
    type, kept beside the indices they come from; floating point other than float32 into float32; grey
    plus alpha into grey, and planar channels into interleaved ones, both as a copy. A damaged field is
    left to :func:`_check_tiff_header` and the decoder to name.
    """
    stored = int(page.nbytes) + _unpacking_bytes(page, height, width, channels)
    dtype = np.dtype(page.dtype)
    pixels = height * width
    colormap = page.colormap if getattr(page, "photometric", None) == PHOTOMETRIC_PALETTE and channels == 1 else None
    if isinstance(colormap, np.ndarray):
        colours = np.dtype(colormap.dtype)
        return stored + pixels * 3 * colours.itemsize, f"3 channel(s) of {colours} (palette colour)"
    read_channels = 1 if channels == 2 else channels
    read_dtype = np.dtype(np.float32) if dtype.kind == "f" else dtype  # bool: made 0/255 uint8 in place
    planar = channels > 1 and page.planarconfig == 2
    if read_dtype == dtype and read_channels == channels and not planar:
        return stored, None
    same = (read_dtype, read_channels) == (dtype, channels)
    read_as = None if same else f"{read_channels} channel(s) of {read_dtype}"
    return stored + pixels * read_channels * read_dtype.itemsize, read_as


def _is_packed(page: tifffile.TiffPage) -> bool:
    """Whether the page's samples take fewer than 8 bits each (bilevel, 2- or 4-bit), which tifffile unpacks
    segment by segment into an array of its own."""
    bits = page.bitspersample
    return isinstance(bits, (int, np.integer)) and int(bits) < 8


def _unpacking_bytes(page: tifffile.TiffPage, height: int, width: int, channels: int) -> int:
    """What tifffile holds beside the image's own array while it decodes packed samples (:func:`_is_packed`),
    from the header alone; 0 for other pages.

    Such a page is never read in one piece: tifffile reads the file's pixel data, then unpacks each
    strip or tile (decompressed first) into an array that it copies into the image. :func:`_decode_tiff`
    has it decode one segment at a time, so one segment counts: an uncompressed bilevel image in one
    strip, as tifffile writes it, takes over twice its pixels' bytes, not its pixels' bytes.
    """
    if not _is_packed(page):
        return 0
    samples = 1 if page.planarconfig == 2 else channels
    if page.is_tiled:
        rows, columns = int(page.tilelength) * max(1, int(page.tiledepth)), int(page.tilewidth)
    else:
        rows, columns = min(max(1, int(page.rowsperstrip)), height), width
    unpacked = rows * columns * samples * np.dtype(page.dtype).itemsize
    packed = rows * -(-columns * samples * int(page.bitspersample) // 8) if page.compression != 1 else 0
    # The pixel data is read into one buffer, then cut into a bytes object per segment: twice its size. Byte
    # counts beyond the file's end are read as far as it goes (such a file is refused when decoded).
    read = 2 * min(sum(int(count) for count in page.databytecounts), int(page.parent.filehandle.size))
    return read + packed + unpacked


def _page_pixels(page: tifffile.TiffPage) -> int:
    """A page's pixel count from its header, 0 where the header is damaged (the page is then read
    only if no other is larger, and its header refused with a message)."""
    height, width = getattr(page, "imagelength", 0), getattr(page, "imagewidth", 0)
    if isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer)):
        return int(height) * int(width)
    return 0


def _tag_int(page: tifffile.TiffPage, name: str, path: Path) -> int:
    """A TIFF field that must be one number; a damaged file can hold several values, or none, there."""
    value = getattr(page, name)
    if isinstance(value, (int, np.integer)):
        return int(value)
    raise InputError(f"image {path} has a damaged TIFF header: its {name} field is {_shown(value)}, not one "
                     "number; copy or export the image again")


def _shown(value: object, limit: int = 60) -> str:
    """A tag value for a message: a damaged field can hold thousands of numbers (shown as plain numbers)."""
    if isinstance(value, tuple) and all(isinstance(item, (int, np.integer)) for item in value):
        value = tuple(int(item) for item in value)
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _decode_tiff(page: tifffile.TiffPage, path: Path) -> np.ndarray:
    """The page's pixels; InputError naming the file when its (compressed) pixel data cannot be decoded."""
    try:
        # One segment at a time where each is unpacked into an array of its own: _unpacking_bytes counts one.
        return page.asarray(maxworkers=1) if _is_packed(page) else page.asarray()
    except _TIFF_DECODE_ERRORS as exc:
        if "imagecodecs" in str(exc):
            raise InputError(f"image {path} is compressed in a way that needs the imagecodecs package ({exc}); "
                             "install am-segm's requirements again (pip install imagecodecs) or save the "
                             "image uncompressed") from exc
        raise _undecodable_tiff(path, exc) from exc
    except NotImplementedError as exc:  # a TIFF feature tifffile does not decode (chroma subsampling, ...)
        raise InputError(f"image {path} uses a TIFF feature no reader here decodes ({exc}); export it again as "
                         "grey or RGB, uncompressed or LZW") from exc
    except RuntimeError as exc:
        if not _is_codec_error(exc):
            raise
        raise _undecodable_tiff(path, exc) from exc


def _is_codec_error(exc: BaseException) -> bool:
    """Whether imagecodecs raised ``exc``: each codec has its own RuntimeError subclass (DeflateError,
    ImcdError for LZW and PackBits, ...) with no shared base class but their package."""
    return type(exc).__module__.split(".", 1)[0] == "imagecodecs"


def _unreadable_tiff(path: Path, exc: BaseException) -> InputError:
    return InputError(f"image {path} cannot be read as TIFF ({type(exc).__name__}: {exc}); copy or export it again")


def _undecodable_tiff(path: Path, exc: BaseException) -> InputError:
    return InputError(f"image {path} cannot be read as TIFF: its pixel data cannot be decoded "
                      f"({type(exc).__name__}: {exc}); the file is damaged or truncated, copy or export it again")


def _as_stored(image: np.ndarray, path: Path) -> np.ndarray:
    """Reduce what a reader returned to the shapes and dtypes the rest of the package accepts."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 2:
        # Grey plus alpha: the alpha channel carries no tissue signal.
        image = image[:, :, 0]
    if image.ndim not in (2, 3):
        raise InputError(f"image {path} has shape {image.shape}; expected (H, W) grey or (H, W, 3|4) colour")
    _check_size(path, image.shape[0], image.shape[1])
    if image.ndim == 3 and image.shape[2] > MAX_CHANNELS:
        raise InputError(
            f"image {path} has {image.shape[2]} channels; at most {MAX_CHANNELS} (RGBA) are supported: "
            "export it as grey or RGB"
        )
    if image.dtype == np.bool_:
        # 0/1 bytes made 0/255 in place, where the decoder's array may be written (read_header counts no copy).
        if not image.flags.writeable:
            return image.astype(np.uint8) * np.uint8(255)
        image = image.view(np.uint8)
        np.multiply(image, np.uint8(255), out=image)
        return np.ascontiguousarray(image)
    if np.issubdtype(image.dtype, np.floating):
        _check_fits_float32(image, path)
        return image.astype(np.float32, copy=False)
    if np.issubdtype(image.dtype, np.integer):
        return np.ascontiguousarray(image)
    raise InputError(f"image {path} has pixel type {image.dtype}; export it as 8- or 16-bit integer or float")


def _check_fits_float32(image: np.ndarray, path: Path) -> None:
    """Refuse a float64 image with finite values beyond float32's range, which the cast would make infinite
    and later checks would then call "NaN or infinite", a cause the file does not have."""
    if image.dtype.itemsize <= 4:
        return
    largest = float(np.finfo(np.float32).max)
    step = max(1, (1 << 16) // max(1, image[0].size))  # temporaries of about 0.5 MB beside the image
    beyond = sum(int(np.count_nonzero(np.isfinite(block) & (np.abs(block) > largest)))
                 for block in (image[r:r + step] for r in range(0, image.shape[0], step)))
    if beyond:
        raise InputError(f"image {path} has {beyond} pixel(s) beyond +-{largest:.3g}, more than 32-bit floats hold: "
                         "scale its values down (any range works: the pipeline stretches each image's own) and "
                         "save it again")


def encode_png(image: np.ndarray, *, compression: int = PNG_COMPRESSION, bgr: bool = False,
               huffman_only: bool = False, row_filter: str = "adaptive") -> bytes:
    """PNG bytes of a uint8/uint16 grey, RGB or RGBA array; the same array always gives the same bytes.

    ``bgr=True`` takes colour arrays in OpenCV's own order (as drawn by OpenCV) and skips the
    conversion; ``compression`` is zlib's level (0-9): lower is faster and larger.
    ``huffman_only`` skips zlib's string matching, which finds next to nothing in noisy
    microscopy: on 512 px tiles it is about a quarter faster and a few per cent smaller.
    ``row_filter`` is one of :data:`PNG_ROW_FILTERS`.
    """
    if row_filter not in PNG_ROW_FILTERS:
        raise ValueError(f"row_filter {row_filter!r} is not one of {', '.join(PNG_ROW_FILTERS)}")
    image = np.asarray(image)
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * np.uint8(255)
    if image.dtype not in _WRITABLE_PNG_DTYPES:
        raise InputError(f"cannot write a {image.dtype} array as PNG; convert it to uint8 or uint16 first")
    if bgr:
        _check_shape_for_write(image, "PNG")
        image = np.ascontiguousarray(image)
    else:
        image = _to_opencv_order(image, "PNG")
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression]
    if huffman_only:
        params += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    if row_filter != "adaptive" and hasattr(cv2, "IMWRITE_PNG_FILTER"):
        params += [cv2.IMWRITE_PNG_FILTER, getattr(cv2, f"IMWRITE_PNG_FILTER_{row_filter.upper()}")]
    ok, buffer = cv2.imencode(".png", image, params)
    if not ok:
        raise InputError(f"OpenCV could not encode a {image.shape} {image.dtype} array as PNG")
    return buffer.tobytes()


def decode_png(data: bytes, *, name: str) -> np.ndarray:
    """Decode PNG bytes that must hold a grey 8-bit tile, named ``name`` in errors.

    A colour PNG whose channels are all equal, or a 16-bit PNG whose values fit in 8 bits, is
    accepted as the grey image it is; anything else is an InputError.
    """
    if not data:
        raise InputError(f"PNG {name} is empty (0 bytes); the tile was not written completely, re-run it",
                         reason="it is empty (0 bytes)")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"PNG {name} ({len(data)} bytes) cannot be decoded (truncated or not a PNG); re-run the tile",
                         reason=f"its {len(data)} bytes cannot be decoded (truncated or not a PNG)")
    if image.ndim == 3:
        channels = image[:, :, : min(3, image.shape[2])]
        if not (channels == channels[:, :, :1]).all():
            raise InputError(f"PNG {name} is a colour image {image.shape}; a grey 8-bit tile was expected")
        image = channels[:, :, 0]
    if image.dtype != np.uint8:
        if image.size and int(image.max()) > 255:
            raise InputError(f"PNG {name} is {image.dtype} with values above 255; a grey 8-bit tile was expected")
        image = image.astype(np.uint8)
    return np.ascontiguousarray(image)


def write_png(path: Path, image: np.ndarray, *, compression: int = PNG_COMPRESSION, bgr: bool = False,
              row_filter: str = "adaptive") -> None:
    """Write a uint8/uint16 grey, RGB or RGBA array as PNG (see :func:`encode_png`), atomically; creates folders."""
    write_atomic(Path(path), encode_png(image, compression=compression, bgr=bgr, row_filter=row_filter))


def write_tiff(path: Path, image: np.ndarray, *, compress: bool = True) -> None:
    """Write a grey, RGB or RGBA array (RGB order) as TIFF, atomically; creates parent folders.

    zlib-compressed unless ``compress=False``; BigTIFF is chosen automatically when the data needs it.
    """
    path = Path(path)
    image = np.asarray(image)
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * np.uint8(255)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise InputError(f"cannot write a {image.dtype} array as TIFF {path}; convert it to an integer or float type")
    _check_shape_for_write(image, "TIFF")
    colour = image.ndim == 3
    with atomic_output(path) as handle:
        tifffile.imwrite(
            handle,
            image,
            photometric="rgb" if colour else "minisblack",
            extrasamples=("unassalpha",) if colour and image.shape[2] == 4 else None,
            compression="zlib" if compress else None,
            compressionargs={"level": TIFF_COMPRESSION_LEVEL} if compress else None,
        )


def _check_shape_for_write(image: np.ndarray, kind: str) -> None:
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)):
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise InputError(f"cannot write an empty {image.shape} array as {kind}")
        return
    raise InputError(f"cannot write an array of shape {image.shape} as {kind}; give (H, W), (H, W, 3) or (H, W, 4)")


def _to_opencv_order(image: np.ndarray, kind: str) -> np.ndarray:
    _check_shape_for_write(image, kind)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGBA2BGRA)
    return np.ascontiguousarray(image)


__all__ = ["MAX_PIXELS", "ImageHeader", "check_complete", "decode_png", "encode_png", "header_size",
           "is_grey_8bit_png", "read_header", "read_image", "write_png", "write_tiff"]
