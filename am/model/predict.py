"""Batched inference: uint8 tiles in, 0/255 masks out, thresholded where the checkpoint says.

Used by the worker (and by evaluation and the benchmark), which never touch torch themselves::

    predictor = Predictor.from_checkpoint("am/models/default.pt", threads=2)
    masks = predictor.predict(tiles)          # (N, 512, 512) uint8 -> (N, 512, 512) uint8 {0, 255}
    predictor.last_times                      # H2D / compute / D2H seconds of that call

The fast path is the only path; what differs by device is the arithmetic:

- the uint8 tiles travel to the device as they are (a quarter of the bytes of float32),
  through a pinned host buffer and a non-blocking copy on CUDA, and are normalised there;
- on CUDA the weights and activations are fp16 (or bf16) in channels_last layout, which is
  what tensor cores want; on a CPU they are bf16 where it has AMX tile units (bf16 matrix
  arithmetic in hardware, about 1.7 times the float32 rate) and float32 elsewhere, where bf16
  is emulated and slower (:func:`am.model.precision.cpu_multiplies_bf16`); either way a tile's result does not
  depend on the batch it came in;
- the threshold is applied on the device and the masks come back as uint8 (a quarter of the
  bytes of float32 probabilities);
- ``compile="on"`` wraps the model in ``torch.compile`` for one fixed batch shape (``batch_size``
  tiles of ``tile_size``, the checkpoint's unless given), compiled once while loading within a
  time budget (short batches are padded to that shape, so it never compiles again); tiles of
  another size run uncompiled, and a warning says so the first time;
- ``tta`` ("rot180", "flips" or "d4", per predictor or per call) averages the probabilities of 2,
  4 or 8 turned and mirrored views (:mod:`am.model.tta`), at 2, 4 or 8 times the compute;
- large areas of one grey level (zero fill, clipped glare: :mod:`am.model.flat`) are blanked
  before the masks are made: the model's answer there means nothing;
- where the checkpoint asks for more than a threshold (touching marks cut apart, specks dropped:
  :mod:`am.model.masks`), the probabilities come back instead of the masks and the host makes
  the masks; behind a GPU the tiles of a batch share a thread pool;
- ``valid`` names the part of each tile that is image, where an image smaller than a tile was
  padded: the masks are made of that part alone and are 0 beyond it (see :meth:`Predictor.predict`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from am.errors import CheckpointError, InputError
from am.model.build import build_model
from am.model.checkpoint import ModelMeta, load_checkpoint
from am.model.device import resolve_device
from am.model.flat import flat_areas
from am.model.masks import mask_from_proba
from am.model.memory import retain_freed_memory
from am.model.precision import cast_for_inference, resolve_compile, resolve_precision
from am.model.tta import averaged, views

log = logging.getLogger(__name__)

DEFAULT_BATCH_CPU = 4
# fp16 with channels_last keeps an H100 busy from about 64 tiles of 512x512 per call.
DEFAULT_BATCH_CUDA = 64
# torch.compile of a U-Net takes 20-60 s on a GPU host; past this the model runs uncompiled.
DEFAULT_COMPILE_BUDGET_S = 180.0
# Host threads making masks from probabilities behind a GPU (OpenCV and the watershed release the GIL).
MAX_POSTPROCESS_THREADS = 8
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Per tile, the rows and columns that are image (None: all of it); see Predictor.predict.
Extents = Sequence[tuple[int, int] | None]


def prepare_input(pixels: torch.Tensor, meta: ModelMeta, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, 1, H, W) on any device -> the normalised input the model was trained on, in ``dtype``.

    Training and inference both call this, so they cannot disagree about normalisation. The
    arithmetic is float32 whatever ``dtype`` is; only the result is cast.
    """
    x = (pixels.float() - meta.input_mean * 255.0) / (meta.input_std * 255.0)
    if meta.in_channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


@dataclass
class PredictTimes:
    """Where the time of one :meth:`Predictor.predict` call went, in seconds (CUDA events on a GPU).

    ``h2d`` includes staging the tiles in the pinned buffer; ``compute`` is normalisation, the
    forward pass and thresholding (and, without post-processing, blanking flat areas); ``d2h`` is
    the copy of the masks (or, when post-processing, the probabilities) back to host memory;
    ``postprocess`` is the host time making masks from probabilities (flat areas blanked,
    touching marks cut apart, specks dropped).
    """

    tiles: int = 0
    h2d: float = 0.0
    compute: float = 0.0
    d2h: float = 0.0
    postprocess: float = 0.0

    def add(self, other: PredictTimes) -> None:
        self.tiles += other.tiles
        self.h2d += other.h2d
        self.compute += other.compute
        self.d2h += other.d2h
        self.postprocess += other.postprocess


class Predictor:
    """A model ready for inference on one device; build it with :meth:`from_checkpoint`.

    The constructor takes ``model`` as it is and converts it in place (device, eval mode,
    channels_last, and for fp16/bf16 its weights): pass a copy of a model you keep training.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: ModelMeta,
        *,
        device: str = "cpu",
        batch_size: int = 0,
        precision: str = "fp32",
        compile: bool = False,
        compile_budget_s: float = DEFAULT_COMPILE_BUDGET_S,
        compile_required: bool = False,
        compile_tile_size: int = 0,
        tta: str = "off",
        postprocess: bool = True,
    ) -> None:
        views(tta)
        compile_tile_size = compile_tile_size or meta.tile_size
        if compile_tile_size < 0 or compile_tile_size % meta.stride:
            raise InputError(f"tile size {compile_tile_size} to compile for is not a positive multiple of "
                             f"{meta.stride}, which this model needs; give the tile size the tiles will have "
                             "(0: the checkpoint's)")
        self._tta = tta
        self._meta = meta
        self._postprocess = postprocess and meta.postprocesses
        self._postprocess_pool: ThreadPoolExecutor | None = None
        self._device = resolve_device(device)
        self._cuda = self._device.type == "cuda"
        self._batch_size = batch_size or (DEFAULT_BATCH_CUDA if self._cuda else DEFAULT_BATCH_CPU)
        self._precision = resolve_precision(precision, str(self._device))
        self._dtype = _DTYPES[self._precision]
        if self._cuda:
            # Tiles have one fixed shape, so cuDNN's per-shape algorithm search pays after the first batch.
            torch.backends.cudnn.benchmark = True
        model = model.to(self._device).eval().to(memory_format=torch.channels_last)
        self._model = cast_for_inference(model, self._dtype)
        self._compiled: torch.nn.Module | None = None
        self._compiled_shape: tuple[int, int, int] | None = None
        self._compile_tile_size = compile_tile_size
        self._uncompiled_warned: set[tuple[int, int]] = set()
        self.compile_s = 0.0
        self._staging: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.last_times = PredictTimes()
        if not meta.trained:
            log.warning("model %s/%s is untrained (random weights): its masks are meaningless",
                        meta.architecture, meta.encoder)
        if compile:
            self._compile(budget_s=compile_budget_s, required=compile_required)

    @classmethod
    def from_checkpoint(
        cls,
        source: str | Path | bytes,
        *,
        device: str | None = None,
        threads: int = 0,
        batch_size: int = 0,
        precision: str = "auto",
        compile: str = "off",
        compile_budget_s: float = DEFAULT_COMPILE_BUDGET_S,
        tile_size: int = 0,
        tta: str = "off",
        postprocess: bool = True,
    ) -> Predictor:
        """Load a local checkpoint (path or bytes; ``s3://`` URIs are the caller's to download).

        ``device`` None picks CUDA when available. ``threads`` > 0 caps torch's CPU threads, so
        several workers on one machine do not oversubscribe its cores. ``batch_size`` 0 picks
        one for the device (tiles per forward pass: 4 on CPU, 64 on CUDA). ``precision`` auto
        is fp16 on CUDA, bf16 on a CPU with AMX and fp32 on other CPUs (:func:`resolve_precision`).
        ``compile`` is auto (CUDA only), on or off; compiling happens here, for ``batch_size``
        tiles of ``tile_size`` px (0: the checkpoint's tile size; give the size the tiles will
        have, since a compiled model runs only that shape and other sizes run uncompiled), and
        an ``on`` compile that fails raises CheckpointError (``auto`` falls back to running uncompiled).
        ``tta`` is the test-time augmentation of calls that do not choose their own.
        ``postprocess`` False keeps masks merely thresholded even where the checkpoint asks for
        more (for measuring what cutting touching marks apart and dropping specks do).
        """
        if isinstance(source, str) and source.startswith("s3://"):
            raise InputError(f"model {source} is an S3 URI: download it first and pass the local file")
        if threads < 0:
            raise InputError(f"threads must be >= 0, got {threads}")
        if batch_size < 0:
            raise InputError(f"batch_size must be >= 0, got {batch_size}")
        if tile_size < 0:
            raise InputError(f"tile_size must be >= 0 (0: the checkpoint's), got {tile_size}")
        if threads > 0:
            torch.set_num_threads(threads)
        device = str(resolve_device(device))  # refuse a device this machine lacks before loading anything
        if device == "cpu":
            retain_freed_memory()
        resolve_precision(precision, device, warn=False)  # refuse a wrong one before loading anything
        use_compile = resolve_compile(compile, device)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        meta, state = load_checkpoint(source if isinstance(source, (bytes, bytearray)) else Path(source))
        model = build_model(meta)
        model.load_state_dict(state, strict=True)
        return cls(model, meta, device=device, batch_size=batch_size, precision=precision, compile=use_compile,
                   compile_budget_s=compile_budget_s, compile_required=compile == "on",
                   compile_tile_size=tile_size, tta=tta, postprocess=postprocess)

    @property
    def meta(self) -> ModelMeta:
        return self._meta

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def compiled(self) -> bool:
        """Whether a compiled model is held; it runs only tiles of :meth:`runs_compiled`'s size."""
        return self._compiled is not None

    def runs_compiled(self, tile_size: int) -> bool:
        """Whether square tiles of ``tile_size`` px run the compiled model (any other shape runs uncompiled)."""
        return self._compiled_shape is not None and self._compiled_shape[1:] == (tile_size, tile_size)

    @property
    def tta(self) -> str:
        return self._tta

    @property
    def postprocess(self) -> bool:
        """Whether masks get the checkpoint's steps beyond the threshold (it names some, and they are not off)."""
        return self._postprocess

    def predict(self, tiles: np.ndarray, *, tta: str | None = None, valid: Extents | None = None) -> np.ndarray:
        """Masks for uint8 tiles of shape (N, H, W): uint8 (N, H, W), 255 where p >= threshold, else 0,
        then cut apart and cleaned of specks as the checkpoint says when :attr:`postprocess`.

        ``tta`` None uses the predictor's own; "rot180", "flips" or "d4" threshold the averaged views.
        ``valid`` gives, per tile, the (rows, columns) at its top left that are image, where an image
        smaller than a tile was padded to it (None, for the call or a tile: all of it). The model
        still sees the whole tile, but flat areas are found and the mask is made in that part alone,
        as if the image edge were the tile's, and the rest of the mask is 0. In the padding, a mark
        cut by the image edge would meet its mirror image and no longer touch an edge, and would be
        dropped as a speck (:mod:`am.model.masks`, step 3).
        """
        self._check(tiles)
        tta = self._tta_for(tta)
        extents = _check_extents(valid, tiles.shape)
        out = np.empty(tiles.shape, dtype=np.uint8)
        times = PredictTimes()
        with torch.inference_mode():
            for start in range(0, tiles.shape[0], self._batch_size):
                chunk = tiles[start : start + self._batch_size]
                part = None if extents is None else extents[start : start + len(chunk)]
                out[start : start + len(chunk)] = self._masks(chunk, times, tta, part)
        self.last_times = times
        return out

    def predict_proba(self, tiles: np.ndarray, *, tta: str | None = None) -> np.ndarray:
        """Mark probabilities in [0, 1] as float32 (N, H, W), for evaluation and pseudo-labelling."""
        self._check(tiles)
        tta = self._tta_for(tta)
        out = np.empty(tiles.shape, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, tiles.shape[0], self._batch_size):
                chunk = tiles[start : start + self._batch_size]
                x = self._to_device(chunk)
                proba = self._proba(x, len(chunk), tta).cpu().numpy()
                proba[flat_areas(chunk)] = 0.0
                out[start : start + len(chunk)] = proba
        return out

    def _tta_for(self, tta: str | None) -> str:
        """The call's mode (the predictor's own when None), checked before any tile is computed."""
        tta = self._tta if tta is None else tta
        views(tta)
        return tta

    # -- the steps of one chunk ------------------------------------------------------------

    def _masks(self, chunk: np.ndarray, times: PredictTimes, tta: str, extents: Extents | None) -> np.ndarray:
        n = len(chunk)
        if not self._cuda:
            start = time.perf_counter()
            x = torch.from_numpy(np.ascontiguousarray(chunk))
            moved = time.perf_counter()
            if self._postprocess:
                proba = self._proba(x, n, tta).numpy()
                computed = time.perf_counter()
                proba[_flat_areas(chunk, extents)] = 0.0
                masks = self._postprocessed(proba, extents)
                times.add(PredictTimes(tiles=n, h2d=moved - start, compute=computed - moved,
                                       postprocess=time.perf_counter() - computed))
                return masks
            mask = self._threshold(self._proba(x, n, tta)).numpy()
            mask[_flat_areas(chunk, extents)] = 0
            _blank_beyond(mask, extents)
            done = time.perf_counter()
            times.add(PredictTimes(tiles=n, h2d=moved - start, compute=done - moved))
            return mask
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        events[0].record()
        x = self._to_device(chunk)
        events[1].record()
        if self._postprocess:
            proba = self._proba(x, n, tta)
            events[2].record()
            host_proba = proba.cpu()
            events[3].record()
            events[3].synchronize()
            started = time.perf_counter()
            host = host_proba.numpy()
            host[_flat_areas(chunk, extents)] = 0.0
            masks = self._postprocessed(host, extents)
            h2d, compute, d2h = (events[i].elapsed_time(events[i + 1]) / 1000.0 for i in range(3))
            times.add(PredictTimes(tiles=n, h2d=h2d, compute=compute, d2h=d2h,
                                   postprocess=time.perf_counter() - started))
            return masks
        mask = self._threshold(self._proba(x, n, tta))
        events[2].record()
        host = self._staging_for(chunk.shape)[1][:n]
        host.copy_(mask, non_blocking=True)
        events[3].record()
        events[3].synchronize()
        started = time.perf_counter()
        masks = host.numpy().copy()
        masks[_flat_areas(chunk, extents)] = 0
        _blank_beyond(masks, extents)
        blanked = time.perf_counter() - started  # host time, counted with the device's compute
        h2d, compute, d2h = (events[i].elapsed_time(events[i + 1]) / 1000.0 for i in range(3))
        times.add(PredictTimes(tiles=n, h2d=h2d, compute=compute + blanked, d2h=d2h))
        return masks

    def _postprocessed(self, proba: np.ndarray, extents: Extents | None = None) -> np.ndarray:
        """0/255 masks (n, H, W) from host probabilities (n, H, W), as the checkpoint asks, each made
        of its tile's image part alone where ``extents`` names one (0 beyond it).

        On CPU the tiles go one after another (torch's threads have just used every core); behind
        a GPU they share a thread pool, since a batch of 64 would otherwise keep one core busy for a second.
        """
        meta = self._meta

        def one(p: np.ndarray, extent: tuple[int, int] | None) -> np.ndarray:
            if extent is None or extent == p.shape:
                return mask_from_proba(p, meta)
            rows, cols = extent
            mask = np.zeros(p.shape, dtype=bool)
            mask[:rows, :cols] = mask_from_proba(np.ascontiguousarray(p[:rows, :cols]), meta)
            return mask

        per_tile = [None] * len(proba) if extents is None else list(extents)
        if self._cuda and len(proba) > 1:
            if self._postprocess_pool is None:
                workers = max(1, min(MAX_POSTPROCESS_THREADS, os.cpu_count() or 1))
                self._postprocess_pool = ThreadPoolExecutor(workers, thread_name_prefix="am-postprocess")
            masks = list(self._postprocess_pool.map(one, proba, per_tile))
        else:
            masks = [one(p, extent) for p, extent in zip(proba, per_tile, strict=True)]
        return np.stack(masks).view(np.uint8) * np.uint8(255)

    def _to_device(self, chunk: np.ndarray) -> torch.Tensor:
        """uint8 (n, H, W) on the device: through a pinned buffer and a non-blocking copy on CUDA."""
        if not self._cuda:
            return torch.from_numpy(np.ascontiguousarray(chunk))
        pinned = self._staging_for(chunk.shape)[0][: len(chunk)]
        pinned.numpy()[...] = chunk
        return pinned.to(self._device, non_blocking=True)

    def _proba(self, pixels: torch.Tensor, n: int, tta: str) -> torch.Tensor:
        """Probabilities (n, H, W) float32 on the device, averaged over the views ``tta`` names."""
        x = prepare_input(pixels.unsqueeze(1), self._meta, dtype=self._dtype)
        return averaged(lambda view: self._forward(view, n), x, tta)[:, 0]

    def _forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Probabilities (n, 1, H, W) of one view; a compiled model sees only its one batch shape."""
        x = x.contiguous(memory_format=torch.channels_last)
        model = self._model
        if self._compiled is not None and self._compiled_shape == (self._batch_size, *x.shape[2:]):
            model = self._compiled
            if n < self._batch_size:
                pad = x.new_zeros((self._batch_size - n, *x.shape[1:]))
                x = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        elif self._compiled is not None and (size := (int(x.shape[2]), int(x.shape[3]))) not in self._uncompiled_warned:
            # The compile's time was spent for another shape: say so once, not at every batch.
            self._uncompiled_warned.add(size)
            log.warning("the model was compiled for %dx%d tiles; these %dx%d tiles run uncompiled, and slower "
                        "(tile_size %d runs the compiled model)", *self._compiled_shape[1:], *size,
                        self._compiled_shape[1])
        return torch.sigmoid(model(x)[:n].float())

    def _threshold(self, proba: torch.Tensor) -> torch.Tensor:
        return (proba >= self._meta.threshold).to(torch.uint8).mul_(255)

    def _staging_for(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pinned host buffers (input, output) for a full batch of this tile size, made once."""
        key = (self._batch_size, int(shape[1]), int(shape[2]))
        if key not in self._staging:
            self._staging[key] = (torch.empty(key, dtype=torch.uint8).pin_memory(),
                                  torch.empty(key, dtype=torch.uint8).pin_memory())
        return self._staging[key]

    # -- compilation --------------------------------------------------------------------------

    def _compile(self, *, budget_s: float, required: bool) -> None:
        """Compile for one batch of ``tile_size`` tiles on a helper thread, waiting at most ``budget_s``.

        Past the budget, or if compiling fails and was not explicitly required, the model runs
        uncompiled and a warning says why; the compile time is logged either way.
        """
        shape = (self._batch_size, self._compile_tile_size, self._compile_tile_size)
        compiled = torch.compile(self._model, dynamic=False)
        outcome: dict[str, BaseException] = {}

        def warm() -> None:
            try:
                with torch.inference_mode():
                    x = prepare_input(torch.zeros((shape[0], 1, *shape[1:]), dtype=torch.uint8, device=self._device),
                                      self._meta, dtype=self._dtype)
                    compiled(x)
                    if self._cuda:
                        torch.cuda.synchronize(self._device)
            except BaseException as exc:  # reported below, on the loading thread
                outcome["error"] = exc

        started = time.perf_counter()
        thread = threading.Thread(target=warm, name="am-compile", daemon=True)
        thread.start()
        thread.join(budget_s)
        self.compile_s = time.perf_counter() - started
        if thread.is_alive():
            log.warning("torch.compile took over its budget of %.0f s for batches of %s: running uncompiled",
                        budget_s, shape)
            return
        if "error" in outcome:
            exc = outcome["error"]
            if required:
                raise CheckpointError(f"torch.compile failed for {self._meta.encoder} on {self._device}: "
                                      f"{type(exc).__name__}: {exc}; set AM_COMPILE=off to run uncompiled") from exc
            log.warning("torch.compile failed after %.1f s (%s: %s): running uncompiled", self.compile_s,
                        type(exc).__name__, exc)
            return
        self._compiled, self._compiled_shape = compiled, shape
        log.info("compiled %s for batches of %d %dx%d tiles (%s, %s) in %.1f s", self._meta.encoder, *shape,
                 self._precision, self._device, self.compile_s)

    def _check(self, tiles: np.ndarray) -> None:
        if not isinstance(tiles, np.ndarray) or tiles.dtype != np.uint8 or tiles.ndim != 3:
            got = f"{tiles.dtype} {tiles.shape}" if isinstance(tiles, np.ndarray) else type(tiles).__name__
            raise InputError(f"tiles must be a uint8 array of shape (N, H, W), got {got}")
        stride = self._meta.stride
        _, h, w = tiles.shape
        if h % stride or w % stride or h == 0 or w == 0:
            raise InputError(
                f"tile size {h}x{w} is not a multiple of {stride}, which this model "
                f"({self._meta.encoder}, depth {self._meta.encoder_depth}) needs; pad or choose another tile size"
            )


def _check_extents(valid: Extents | None, shape: tuple[int, ...]) -> list[tuple[int, int] | None] | None:
    """``valid`` as a list of one extent (or None) per tile of ``shape`` (N, H, W); InputError naming the
    first that does not fit; None where no tile has one."""
    if valid is None:
        return None
    n, height, width = shape
    extents = list(valid)
    if len(extents) != n:
        raise InputError(f"valid names the image part of {len(extents)} tile(s) for {n} tile(s); give one "
                         "(rows, columns) or None per tile")
    for index, extent in enumerate(extents):
        if extent is None:
            continue
        if (not isinstance(extent, (tuple, list)) or len(extent) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in extent)
                or not (1 <= extent[0] <= height and 1 <= extent[1] <= width)):
            raise InputError(f"image part {extent!r} of tile {index} does not fit tiles of {height}x{width}: "
                             "give (rows, columns) of at least 1 and at most the tile's, or None for all of it")
        extents[index] = (int(extent[0]), int(extent[1]))
    return None if all(extent is None for extent in extents) else extents


def _flat_areas(chunk: np.ndarray, extents: Extents | None) -> np.ndarray:
    """:func:`flat_areas` of each tile's image part alone (False beyond it): reflected padding would
    double a flat strip along the image edge, and blank one the image alone does not have."""
    if extents is None:
        return flat_areas(chunk)
    flat = np.zeros(chunk.shape, dtype=bool)
    for tile, extent, out in zip(chunk, extents, flat, strict=True):
        rows, cols = tile.shape if extent is None else extent
        out[:rows, :cols] = flat_areas(np.ascontiguousarray(tile[:rows, :cols]))
    return flat


def _blank_beyond(masks: np.ndarray, extents: Extents | None) -> None:
    """Zero each mask (n, H, W) beyond its tile's image part, in place: a mask says nothing of the padding."""
    if extents is None:
        return
    for mask, extent in zip(masks, extents, strict=True):
        if extent is not None:
            mask[extent[0]:, :] = 0
            mask[:, extent[1]:] = 0


__all__ = ["DEFAULT_BATCH_CPU", "DEFAULT_BATCH_CUDA", "PredictTimes", "Predictor", "prepare_input"]
