"""Image I/O stage: read source images, write results atomically, encode and decode tiles.

Sources are TIFF (read with tifffile) or PNG (read with OpenCV), grey or RGB(A), 8- or 16-bit
or floating point. Arrays are returned as stored, with colour in RGB(A) order whatever the
library underneath uses. Writes go to a temporary file in the target folder that is renamed
into place, so a reader never sees half a file; PNG bytes are deterministic so a worker that
processes a tile twice writes the same object twice::

    image = read_image(Path("source/g1/scan.tif"))   # (H, W) uint16, say
    write_png(Path("out/mask.png"), mask)
    data = encode_png(tile)                          # bytes for S3
    tile = decode_png(data, name="job/g1/0007.png")  # (T, T) uint8
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import cv2
import numpy as np
import tifffile

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
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# In the IHDR chunk, after width and height: bit depth 8, colour type 0 (grey).
_PNG_GREY_8BIT = b"\x08\x00"
_WRITABLE_PNG_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def read_image(path: Path) -> np.ndarray:
    """Read one TIFF or PNG image as stored: (H, W) grey or (H, W, 3|4) RGB(A).

    Integer dtypes are kept (uint8, uint16, int16, ...); floating-point data becomes float32;
    a 1-bit image becomes uint8 0/255. Raises InputError, naming the file and the fix, for a
    missing, empty, unreadable or unsupported file, a multi-page TIFF, an empty image, more
    than four channels or more than MAX_PIXELS pixels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"image {path} does not exist; check the path")
    if not path.is_file():
        raise InputError(f"image {path} is not a file; give the path of one .tif, .tiff or .png image")
    if path.stat().st_size == 0:
        raise InputError(f"image {path} is empty (0 bytes); copy the image again")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        image = _read_tiff(path)
    elif suffix in PNG_SUFFIXES:
        image = _read_png(path)
    else:
        raise InputError(
            f"image {path} has unsupported extension {path.suffix!r}; convert it to TIFF (.tif/.tiff) or PNG"
        )
    return _as_stored(image, path)


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
    if len(header) < 24 or not header.startswith(_PNG_SIGNATURE) or header[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", header[16:24])
    return int(height), int(width)


def is_grey_8bit_png(data: bytes) -> bool:
    """Whether ``data`` declares itself a grey 8-bit PNG (the header only; decoding still checks the rest)."""
    return _png_size(data[:24]) is not None and data[24:26] == _PNG_GREY_8BIT


def header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of a TIFF or PNG from its header alone, or None when the header cannot tell.

    For estimates made before the pixels are needed; a file this cannot read is reported, with
    the fix, by :func:`read_image`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in PNG_SUFFIXES:
            with path.open("rb") as handle:
                return _png_size(handle.read(24))
        if suffix in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
    except (OSError, ValueError, IndexError, struct.error, tifffile.TiffFileError) as exc:
        log.debug("cannot read the size of %s from its header (%s)", path, exc)
    return None


def _read_png(path: Path) -> np.ndarray:
    with path.open("rb") as handle:
        size = _png_size(handle.read(24))
    if size is None:
        raise InputError(f"image {path} is not a PNG file (bad signature); re-export it as PNG or TIFF")
    height, width = size
    _check_size(path, height, width)
    if height * width > OPENCV_MAX_PIXELS:
        raise InputError(
            f"image {path} is {height} x {width} pixels, too large to decode as PNG (limit {OPENCV_MAX_PIXELS}); "
            "save it as TIFF instead"
        )
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"image {path} cannot be decoded as PNG (truncated or corrupt); copy or export it again")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


# TIFF photometric interpretations read specially (TIFF 6.0, tag 262).
PHOTOMETRIC_MINISWHITE = 0
PHOTOMETRIC_PALETTE = 3
PHOTOMETRIC_SEPARATED = 5


def _read_tiff(path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            # Reduced-resolution pages (thumbnails, pyramid levels) repeat the image: only full ones count.
            pages = [page for page in tif.pages if not getattr(page, "is_reduced", False)]
            if len(pages) != 1:
                raise InputError(
                    f"image {path} is a multi-page TIFF with {len(pages)} full-size image planes; am-segm reads "
                    "one image per file: save the plane to segment as its own TIFF"
                )
            page = pages[0]
            _check_size(path, int(page.imagelength), int(page.imagewidth))
            photometric = int(page.photometric)
            if photometric == PHOTOMETRIC_SEPARATED:
                raise InputError(f"image {path} is a CMYK TIFF; export it as grey or RGB")
            image = page.asarray()
            axes = page.axes
            colormap = page.colormap if photometric == PHOTOMETRIC_PALETTE else None
            bits = int(page.bitspersample)
    except InputError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        if "imagecodecs" in str(exc):
            raise InputError(f"image {path} is compressed in a way that needs the imagecodecs package ({exc}); "
                             "install am-segm's requirements again (pip install imagecodecs) or save the "
                             "image uncompressed") from exc
        raise InputError(f"image {path} cannot be read as TIFF ({exc}); copy or export it again") from exc
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
        if np.issubdtype(image.dtype, np.unsignedinteger):
            top = image.dtype.type(min((1 << bits) - 1, np.iinfo(image.dtype).max))
            image = np.subtract(top, image, out=image)  # in place: no full-size copy of a 20000 px image
        else:
            image = image.max() - image
    elif colormap is not None and image.ndim == 2:
        # Palette colour: the pixels are indices into the colour map, not intensities.
        if image.max() >= colormap.shape[1]:
            raise InputError(f"image {path} has palette indices beyond its {colormap.shape[1]}-entry colour map; "
                             "export it as grey or RGB")
        image = np.ascontiguousarray(np.moveaxis(colormap[:, image], 0, -1))
    return image


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
        return image.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    if np.issubdtype(image.dtype, np.integer):
        return np.ascontiguousarray(image)
    raise InputError(f"image {path} has pixel type {image.dtype}; export it as 8- or 16-bit integer or float")


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
        raise InputError(f"PNG {name} is empty (0 bytes); the tile was not written completely, re-run it")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"PNG {name} ({len(data)} bytes) cannot be decoded (truncated or not a PNG); re-run the tile")
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


__all__ = ["MAX_PIXELS", "decode_png", "encode_png", "header_size", "is_grey_8bit_png", "read_image", "write_png",
           "write_tiff"]
