"""Model checkpoints: one self-describing file that loads with ``torch.load(weights_only=True)``.

A checkpoint holds the weights and everything needed to use them correctly (architecture,
input normalisation, the decision threshold, tile size, pixel scale), so no consumer ever
repeats a constant such as the threshold. Loading needs no network and executes no pickled
code::

    save_checkpoint(Path("model.pt"), model, meta, storage="fp16")
    meta, state = load_checkpoint(Path("model.pt"))

File layout: ``{"format": "am-segm-checkpoint", "version": 1, "meta": {...}, "state_dict": {...}}``;
a file with int8 weights (:mod:`am.model.storage`) is version 2 and adds ``"scales": {...}``, so that
a build that cannot read int8 refuses it instead of loading its levels as weights.
"""

from __future__ import annotations

import io
import logging
import math
import numbers
import os
import pickle
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from am.errors import CheckpointError
from am.imageio import PNG_SIGNATURE, TIFF_SIGNATURES
from am.model.storage import pack, unpack
from am.models import DEFAULT_MODEL

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "am-segm-checkpoint"
CHECKPOINT_VERSION = 1
INT8_CHECKPOINT_VERSION = 2  # version 1 plus per-channel scales of int8 weights
ARCHITECTURES = ("Unet",)
# The smallest tile a model may be meant for (and am.train --tile-size): whole-image prediction
# (am.model.whole) overlaps its windows by a quarter of such small tiles, so every size from here
# up validates and evaluates; the pipeline's own tile_size setting starts here too.
MIN_TILE_SIZE = 64
TILE_MULTIPLE = 32
# Validation figures am.model prints and compares: numbers wherever a checkpoint holds them.
VALIDATION_FIGURES = ("dice", "iou", "precision", "recall", "f1")


def tile_size_problem(value: Any, *, name: str = "tile_size") -> str | None:
    """Why ``value`` cannot be a model's tile size (None: it can): the one rule for checkpoints,
    am.train's --tile-size and whole-image prediction."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or value < MIN_TILE_SIZE or value % TILE_MULTIPLE:
        return f"{name} {value!r} must be a multiple of {TILE_MULTIPLE} and at least {MIN_TILE_SIZE}"
    return None


def _whole_number(name: str, value: Any, *, shown: Any = None) -> int:
    """``value`` as an int; ``shown`` is the list it came from, named in the error instead."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if shown is not None:
            raise CheckpointError(f"{name} {list(shown)!r} must be whole numbers (int): {value!r} is a "
                                  f"{type(value).__name__}")
        raise CheckpointError(f"{name} {value!r} must be a whole number (int), not a {type(value).__name__}")
    return int(value)


def _finite_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise CheckpointError(f"{name} {value!r} must be a finite number")
    return float(value)


@dataclass(frozen=True)
class ModelMeta:
    """Everything about a model except its weights.

    ``input_mean``/``input_std`` apply to pixels scaled to [0, 1]: the network sees
    ``(x / 255 - input_mean) / input_std``. ``threshold`` is the only decision threshold in
    the project: inference and validation both read it from here. ``seed_threshold`` (None: off)
    is the higher level whose cores split marks that touch at ``threshold``, and components under
    ``min_mark_px`` model pixels away from the edge are specks (0: kept), as are those under
    ``min_mark_fraction`` of the median mark of their tile (0: no such rule); see :mod:`am.model.masks`.
    ``pixel_scale`` is how many
    pixels of the original image one pixel seen in training stood for (1.0 = full resolution).
    ``refine_channels`` (0: none) is the width of the full-resolution branch of
    :class:`am.model.refine.RefinedUnet`; checkpoints written before it existed are plain U-Nets.
    Every field is type-checked (whole numbers are ints, not 5.0 or True; the other numbers finite),
    so a hand-edited file is refused here instead of giving NaN masks or a traceback in a worker.
    """

    encoder: str
    architecture: str = "Unet"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    refine_channels: int = 0
    in_channels: int = 1
    input_mean: float = 0.5
    input_std: float = 0.25
    threshold: float = 0.5
    seed_threshold: float | None = None
    min_mark_px: int = 0
    min_mark_fraction: float = 0.0
    tile_size: int = 512
    pixel_scale: float = 1.0
    trained: bool = False
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Types first: a file edited by hand (or by another program) may hold 5.0, "0.5", True or NaN
        # where a number belongs, which would otherwise pass these checks and fail in a worker.
        for name in ("encoder_depth", "refine_channels", "in_channels", "min_mark_px", "tile_size"):
            object.__setattr__(self, name, _whole_number(name, getattr(self, name)))
        channels = self.decoder_channels
        if isinstance(channels, (str, bytes)) or not isinstance(channels, (list, tuple)):
            raise CheckpointError(f"decoder_channels {channels!r} must be a list of whole numbers, one per encoder "
                                  "stage")
        object.__setattr__(self, "decoder_channels",
                           tuple(_whole_number("decoder_channels", c, shown=channels) for c in channels))
        for name in ("input_mean", "input_std", "threshold", "min_mark_fraction", "pixel_scale"):
            object.__setattr__(self, name, _finite_number(name, getattr(self, name)))
        if self.seed_threshold is not None:
            object.__setattr__(self, "seed_threshold", _finite_number("seed_threshold", self.seed_threshold))
        if not isinstance(self.trained, (bool, np.bool_)):
            raise CheckpointError(f"trained {self.trained!r} must be true or false")
        object.__setattr__(self, "trained", bool(self.trained))
        for name in ("training", "validation"):
            if not isinstance(getattr(self, name), dict):
                raise CheckpointError(f"{name} {getattr(self, name)!r} must be a dict (a summary of the run)")
        for key in VALIDATION_FIGURES:
            value = self.validation.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise CheckpointError(f"validation {key} {value!r} must be a number (the score the training "
                                      "measured)")
        if not isinstance(self.architecture, str) or self.architecture not in ARCHITECTURES:
            raise CheckpointError(
                f"architecture {self.architecture!r} is not supported; use one of {', '.join(ARCHITECTURES)}"
            )
        if not is_known_encoder(self.encoder):
            raise CheckpointError(
                f"encoder {self.encoder!r} is unknown to segmentation-models-pytorch; "
                "use e.g. resnext50_32x4d, resnet18, tu-mobilenetv2_100 or tu-mobilenetv3_small_100"
            )
        if not 3 <= self.encoder_depth <= 5:
            raise CheckpointError(f"encoder_depth {self.encoder_depth} must be 3, 4 or 5")
        if len(self.decoder_channels) != self.encoder_depth or min(self.decoder_channels) < 1:
            raise CheckpointError(
                f"decoder_channels {self.decoder_channels} must hold {self.encoder_depth} positive numbers "
                "(one per encoder stage)"
            )
        if not 0 <= self.refine_channels <= 256:
            raise CheckpointError(f"refine_channels {self.refine_channels!r} must be a whole number in 0-256 "
                                  "(0: no full-resolution refinement)")
        if self.in_channels not in (1, 3):
            raise CheckpointError(f"in_channels {self.in_channels} must be 1 (grey) or 3 (grey repeated)")
        if not self.input_std > 0:
            raise CheckpointError(f"input_std {self.input_std} must be > 0")
        if not 0.0 < self.threshold < 1.0:
            raise CheckpointError(f"threshold {self.threshold} must lie strictly between 0 and 1")
        if self.seed_threshold is not None and not self.threshold < self.seed_threshold < 1.0:
            raise CheckpointError(f"seed_threshold {self.seed_threshold} must lie between threshold "
                                  f"{self.threshold} and 1 (or be None: no separation of touching marks)")
        if self.min_mark_px < 0:
            raise CheckpointError(f"min_mark_px {self.min_mark_px!r} must be a whole number >= 0 (0 keeps specks)")
        if not 0.0 <= self.min_mark_fraction < 1.0:
            raise CheckpointError(f"min_mark_fraction {self.min_mark_fraction!r} must lie in [0, 1) "
                                  "(a fraction of the median mark; 0 turns the rule off)")
        if problem := tile_size_problem(self.tile_size):
            raise CheckpointError(problem)
        if not self.pixel_scale > 0:
            raise CheckpointError(f"pixel_scale {self.pixel_scale} must be > 0")

    @property
    def postprocesses(self) -> bool:
        """Whether masks take steps beyond the threshold (:mod:`am.model.masks`)."""
        return self.seed_threshold is not None or self.min_mark_px > 0 or self.min_mark_fraction > 0

    @property
    def stride(self) -> int:
        """Input height and width must be multiples of this: 32 for every model, so tile plans never
        depend on which checkpoint runs (the deepest encoder halves the input five times)."""
        return 32

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), so ``weights_only`` loading accepts them."""
        data = asdict(self)
        data["decoder_channels"] = list(self.decoder_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        if not isinstance(data, dict):
            raise CheckpointError(f"checkpoint metadata must be a dict, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CheckpointError(f"checkpoint metadata has unknown field(s) {', '.join(unknown)}")
        if "encoder" not in data:
            raise CheckpointError("checkpoint metadata lacks the encoder name")
        try:
            return cls(**data)
        except TypeError as exc:
            raise CheckpointError(f"checkpoint metadata is malformed: {exc}") from exc


def is_known_encoder(name: str) -> bool:
    """smp's own encoders, or ``tu-<name>`` for any timm model (built without downloading weights)."""
    import segmentation_models_pytorch as smp

    if not isinstance(name, str):
        return False
    if name.startswith("tu-"):
        import timm

        return bool(timm.is_model(name[3:]))
    return name in smp.encoders.encoders


def s3_uri_problem(text: str) -> str | None:
    """Why ``text`` cannot name a checkpoint here (None: it may): an ``s3://`` URI, which only the
    pipeline (``--backend aws``) and its workers download; also spotted after ``Path`` turned it into ``s3:/...``."""
    if not text.startswith(("s3://", "s3:/")):
        return None
    uri = "s3://" + text.removeprefix("s3://").removeprefix("s3:/")
    return (f"model {uri} is an S3 URI, which only python -m am.pipeline --backend aws and its workers download; "
            f"download it first (aws s3 cp {uri} model.pt) and pass the local file")


def checkpoint_argument(text: str) -> Path:
    """argparse ``type`` of options that take a local checkpoint file: refuses an ``s3://`` URI
    by name, where ``Path`` would quietly make it "s3:/..." and a later "does not exist"."""
    import argparse

    if problem := s3_uri_problem(text):
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def default_model_path() -> Path:
    """The model shipped inside the package, used when nothing else is configured."""
    return DEFAULT_MODEL


def save_checkpoint(path: Path, model: torch.nn.Module, meta: ModelMeta, *, storage: str = "fp32") -> None:
    """Write ``model``'s weights and ``meta`` to ``path`` atomically (temporary file, then rename).

    ``storage`` ``fp16`` halves the file and ``int8`` stores convolution weights in a quarter of
    fp32's bytes (:mod:`am.model.storage` says what stays wider and why); :func:`load_checkpoint`
    gives float32 back whatever the storage.
    """
    path = Path(path)
    weights = model.state_dict()
    for key, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"cannot save {path}: {key} holds inf or NaN (the training diverged)")
    state, scales = pack(weights, storage)
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": INT8_CHECKPOINT_VERSION if scales else CHECKPOINT_VERSION,
        "meta": meta.to_dict(),
        "state_dict": state,
    }
    if scales:
        payload["scales"] = scales
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            save_torch_file(payload, fh, path)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model is meant to be shared and shipped
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, tmp):
            # A full disk found by the last flush or fsync: the temporary name means nothing to the user.
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    log.info("saved checkpoint %s (%s, %d tensors, %s)", path, meta.encoder, len(state), storage)


def save_torch_file(payload: Any, handle: Any, path: Path) -> None:
    """``torch.save(payload, handle)``, a failed write of ``handle`` raised as the OSError it is, naming ``path``.

    torch turns an OSError of the file it writes (a full disk: ENOSPC, a quota: EDQUOT) into a
    RuntimeError about "unexpected pos" in its zip writer, which names neither the cause nor the
    file and which the command line cannot tell from a bug: it would end in a traceback instead of
    "no space left on ...; free space and rerun". An OSError torch lets through as it is (where the
    very first write fails) is the caller's to name. The caller still removes its unfinished file.
    """
    try:
        torch.save(payload, handle)
    except RuntimeError as exc:
        failed = _os_error_behind(exc)
        if failed is None:
            raise
        raise OSError(failed.errno, failed.strerror, failed.filename or str(path)) from exc


def _os_error_behind(exc: BaseException) -> OSError | None:
    """The OSError (with an errno) that ``exc`` was raised from or while handling, or None."""
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno is not None:
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def load_checkpoint(source: Path | bytes) -> tuple[ModelMeta, dict[str, torch.Tensor]]:
    """Read and validate a checkpoint from a local path or its bytes.

    Returns the metadata and an fp32 state dict that is known to fit the architecture the
    metadata describes. Raises :class:`CheckpointError` naming the file for anything else,
    bytes changed since the file was written included (the zip's CRCs are checked: torch does not).
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    payload = _read_payload(source, name)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{name} is a torch file but not an am-segm checkpoint (no format {CHECKPOINT_FORMAT!r}); "
            "write checkpoints with am.model.save_checkpoint or python -m am.train"
        )
    version = payload.get("version")
    if version not in (CHECKPOINT_VERSION, INT8_CHECKPOINT_VERSION):
        raise CheckpointError(f"{name} is checkpoint version {version!r}; this build reads versions "
                              f"{CHECKPOINT_VERSION} and {INT8_CHECKPOINT_VERSION} (int8 weights)")
    try:
        meta = ModelMeta.from_dict(payload.get("meta"))
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {exc} (its metadata is not what am.train writes: train or export the "
                              "model again)") from exc
    raw_state = payload.get("state_dict")
    if not isinstance(raw_state, dict) or not all(isinstance(v, torch.Tensor) for v in raw_state.values()):
        raise CheckpointError(f"{name} has no state_dict of tensors")
    raw_scales = payload.get("scales", {}) if version == INT8_CHECKPOINT_VERSION else {}
    if not isinstance(raw_scales, dict) or not all(isinstance(v, torch.Tensor) for v in raw_scales.values()):
        raise CheckpointError(f"{name} has int8 scales that are not tensors: the file is damaged; train or "
                              "export it again")
    state = unpack(raw_state, raw_scales, name=name)
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise CheckpointError(f"{name} holds inf or NaN in {len(broken)} tensor(s), first {broken[0]}: "
                              "its model would give meaningless masks; train or export it again")
    _check_fits(meta, state, name)
    return meta, state


def _read_payload(source: Path | bytes, name: str) -> Any:
    if isinstance(source, (bytes, bytearray)):
        stream: Any = io.BytesIO(source)
    else:
        path = Path(source)
        if path.is_dir():
            raise CheckpointError(f"checkpoint {path} is a folder; pass the checkpoint file (.pt) inside it")
        if not path.is_file():
            if problem := s3_uri_problem(str(source)):  # Path() made "s3://b/k" into "s3:/b/k"
                raise CheckpointError(problem)
            raise CheckpointError(f"checkpoint {path} does not exist; train one with python -m am.train or "
                                  "pass an existing file")
        stream = path
    _check_signature(stream, name)
    _check_crcs(stream, name)
    if isinstance(stream, io.BytesIO):
        stream.seek(0)
    try:
        return torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc):
            # torch's own text goes on to suggest weights_only=False, which would run the file's code.
            refused = next((line.strip().split(". Please")[0] for line in str(exc).splitlines()
                            if "WeightsUnpickler error" in line), "objects other than tensors")
            raise CheckpointError(
                f"{name} holds objects that safe loading refuses ({refused}); only am-segm checkpoints are "
                f"accepted, never loaded unsafely{_CHECKPOINT_HINT}"
            ) from exc
        raise CheckpointError(f"{name} is not a readable torch checkpoint file: {exc}{_CHECKPOINT_HINT}") from exc
    except Exception as exc:  # torch raises many types for a truncated or foreign file; all mean "not ours"
        raise CheckpointError(
            f"{name} is not a readable torch checkpoint file ({type(exc).__name__}: {exc}){_CHECKPOINT_HINT}"
        ) from exc


# How files that are often passed by mistake begin: what to call them in the error.
_FOREIGN_SIGNATURES = ((PNG_SIGNATURE, "a PNG image"), *((signature, "a TIFF image") for signature in TIFF_SIGNATURES),
                       (b"\xff\xd8\xff", "a JPEG image"), (b"\x1f\x8b", "a gzip archive"),
                       (b"\x89HDF", "an HDF5 file (Keras or h5py?)"), (b"{", "JSON text"),
                       (b"\x08", "a protobuf (ONNX?) file"))


def _check_signature(stream: Path | io.BytesIO, name: str) -> None:
    """Refuse a file that is plainly not a torch checkpoint by what it is, before torch.load reads it.

    torch's own errors for such files are about pickling or zip records, and one of them advises
    loading unsafely; an image passed as ``--model`` deserves "this is a TIFF image".
    """
    if isinstance(stream, io.BytesIO):
        head = stream.getvalue()[:8]
    else:
        with stream.open("rb") as handle:
            head = handle.read(8)
    if head.startswith(b"PK") or head.startswith(b"\x80"):  # a zip archive (torch >= 1.6) or a legacy pickle
        return
    what = next((label for signature, label in _FOREIGN_SIGNATURES if head.startswith(signature)), None)
    if not head:
        described = "is empty"
    elif what:
        described = f"is {what}"
    else:
        described = f"does not start as one (its first bytes are {head!r})"
    raise CheckpointError(f"{name} is not a torch checkpoint: it {described}{_CHECKPOINT_HINT}")


def _check_crcs(stream: Path | io.BytesIO, name: str) -> None:
    """Refuse a checkpoint whose bytes changed after torch wrote it, naming the damaged record.

    torch writes a zip archive with a CRC-32 per record but does not check them when it loads: a
    few flipped bytes in the weights load silently as different weights. Reading every record
    once more costs a few milliseconds (about 9 MB for the shipped model). A file that is not a
    zip at all (cut short before its directory, or another format) is left to torch.load, whose
    error says so; so is the legacy non-zip format, which holds no CRCs.
    """
    try:
        if not zipfile.is_zipfile(stream):
            return
        with zipfile.ZipFile(stream) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise CheckpointError(f"{name} is damaged: its zip structure cannot be read ({why}); {_DAMAGED_HINT}") from exc
    if bad is not None:
        raise CheckpointError(f"{name} is damaged: record {bad} does not match the checksum written with it, so its "
                              f"weights are not the ones saved; {_DAMAGED_HINT}")


_DAMAGED_HINT = ("copy or download the file again (from the machine that trained it, or the S3 object it came "
                 "from), or train or export it again")

# What to do about a file torch cannot read at all (truncated, another format, or no checkpoint).
_CHECKPOINT_HINT = ("; pass a checkpoint written by python -m am.train or am.pseudolabel (a .pt file), or "
                    "copy it again if it was cut short")


def check_buildable(meta: ModelMeta) -> dict[str, torch.Tensor]:
    """Build the architecture ``meta`` describes and return its (shape-only) state dict, or raise
    CheckpointError saying why segmentation-models-pytorch cannot build it.

    Built on the meta device: no memory, no compute, nothing downloaded (never with encoder
    weights), about 0.1 s. ``timm`` knows models smp's U-Net cannot use (a ViT has no feature
    pyramid: "Unsupported model downsampling pattern"), so a known name is not enough. A few
    encoders call ``.item()`` while they are built, which the meta device cannot answer: those
    are built again on the CPU, which costs their real size once.
    """
    from am.model.build import build_model

    try:
        with torch.device("meta"):
            return build_model(meta).state_dict()
    except Exception as meta_exc:  # smp and timm raise ValueError, AttributeError, RuntimeError, ...
        try:
            return build_model(meta).state_dict()
        except Exception as exc:
            raise CheckpointError(
                f"segmentation-models-pytorch cannot build a {meta.architecture} with encoder {meta.encoder!r} "
                f"(depth {meta.encoder_depth}, decoder {list(meta.decoder_channels)}): {type(exc).__name__}: "
                f"{str(exc).strip().rstrip('.') or meta_exc}; use an encoder it builds U-Nets from, e.g. "
                "resnext50_32x4d, resnet18, tu-mobilenetv3_large_100 or tu-mobilenetv3_small_100 (transformers "
                "such as ViT have no feature pyramid for a U-Net)"
            ) from exc


def check_input_sizes(meta: ModelMeta, sizes: Mapping[str, int]) -> None:
    """Raise CheckpointError if the model ``meta`` describes cannot segment square inputs of these sides.

    ``sizes`` maps what each side is (``"--crop"``, ``"tile size"``) to the side in px, so that
    the message names where a refused size came from. Some encoders build but take one input
    size only (timm's Swin checks for its 224 px), which would otherwise surface as an assertion
    deep in the first training step. Run on the meta device (shapes only, well under a second);
    an encoder whose forward pass needs real values is run again on the CPU, without gradients.
    """
    from am.model.build import build_model

    by_size: dict[int, list[str]] = {}
    for source, size in sizes.items():
        by_size.setdefault(size, []).append(f"{source} {size}")
    for size, sources in sorted(by_size.items()):
        shape = (1, meta.in_channels, size, size)
        try:
            with torch.device("meta"):
                build_model(meta)(torch.zeros(shape))
        except Exception as meta_exc:  # timm asserts, smp raises ValueError or RuntimeError
            try:
                with torch.no_grad():
                    build_model(meta).eval()(torch.zeros(shape))
            except Exception as exc:
                raise CheckpointError(
                    f"a {meta.architecture} with encoder {meta.encoder!r} cannot segment {size} x {size} px "
                    f"inputs ({', '.join(sources)}): {type(exc).__name__}: "
                    f"{str(exc).strip().rstrip('.') or meta_exc}; use an encoder that takes any multiple of "
                    "32 px, e.g. resnext50_32x4d, resnet18 or tu-mobilenetv3_large_100"
                ) from exc


def architecture_problem(*, input_sizes: Mapping[str, int] | None = None, **fields_: Any) -> str | None:
    """Why a model with these :class:`ModelMeta` fields cannot be trained or loaded (None: it can).

    For option checks that run before any work (am.train, am.pseudolabel): the metadata's own
    rules, whether smp can build the architecture at all (:func:`check_buildable`), then whether
    it takes ``input_sizes`` (by default its tile size) as input (:func:`check_input_sizes`).
    """
    try:
        meta = ModelMeta(**fields_)
        check_buildable(meta)
        check_input_sizes(meta, {"tile size": meta.tile_size} if input_sizes is None else input_sizes)
    except CheckpointError as exc:
        return str(exc)
    return None


def _check_fits(meta: ModelMeta, state: dict[str, torch.Tensor], name: str) -> None:
    """Compare names and shapes against the architecture built on the meta device (no memory, no compute)."""
    try:
        expected = check_buildable(meta)
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {exc}") from exc
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            detail.append(f"{len(wrong)} of wrong shape (e.g. {k}: {tuple(state[k].shape)} "
                          f"instead of {tuple(expected[k].shape)})")
        raise CheckpointError(
            f"{name}: weights do not fit a {meta.architecture}/{meta.encoder} "
            f"(depth {meta.encoder_depth}, decoder {list(meta.decoder_channels)}): {'; '.join(detail)}"
        )
