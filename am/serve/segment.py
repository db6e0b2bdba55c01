"""Whole-image segmentation in one process: normalise, tile, predict, stitch.

The SageMaker container needs no queues (SageMaker runs one container per instance and
spreads records over them itself), so this is the pipeline's segmentation stage without
S3 or SQS, built from the same pieces: :func:`am.normalize.normalize`, the pitch check and
``scale`` (``auto`` included) of :mod:`am.pitch`, and the pipeline's tiling, per-tile masks and
stitching (:func:`am.model.whole.predict_image_mask`) with the model's :class:`am.model.Predictor`::

    segmenter = ImageSegmenter(Predictor.from_checkpoint(find_model(Path("/opt/ml/model"))), scale="auto")
    mask = segmenter.segment(read_image(path))      # uint8 0/255, the image's height x width
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from am.errors import CheckpointError
from am.model.predict import Predictor
from am.model.whole import predict_image_mask
from am.normalize import blank_values, check_finite, normalize, to_grey
from am.pitch import resolve_scale
from am.prepare import check_image_size, nominal_factor

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"


def find_model(model_dir: Path) -> Path:
    """``model_dir/model.pt``, else the only ``.pt`` file under ``model_dir`` (SageMaker unpacks model.tar.gz there)."""
    model_dir = Path(model_dir)
    if model_dir.is_file():
        raise CheckpointError(f"model folder {model_dir} is a file, not a folder: give the folder that holds it "
                              f"({model_dir.parent})")
    if not model_dir.is_dir():
        raise CheckpointError(f"model folder {model_dir} does not exist; give the folder holding {MODEL_FILE} "
                              "(SageMaker unpacks the model data there)")
    preferred = model_dir / MODEL_FILE
    if preferred.is_file():
        return preferred
    found = sorted(p for p in model_dir.rglob("*.pt") if p.is_file())
    if len(found) == 1:
        return found[0]
    listed = ", ".join(str(p.relative_to(model_dir)) for p in found[:10]) or "none"
    raise CheckpointError(f"model folder {model_dir} has no {MODEL_FILE} and {len(found)} .pt files ({listed}); "
                          f"name the checkpoint {MODEL_FILE} in the model archive")


class ImageSegmenter:
    """Turns any image the pipeline accepts into its 0/255 mask, with the pipeline's tiling and normalisation."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        tile_size: int = 512,
        tile_overlap: int = 128,
        low_pct: float = 1.0,
        high_pct: float = 99.0,
        scale: float | str = 1.0,
    ) -> None:
        self.predictor = predictor
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.low_pct = low_pct
        self.high_pct = high_pct
        self.scale = scale

    def segment(self, image: np.ndarray, *, name: str = "image") -> np.ndarray:
        """The mask of ``image`` (grey or colour, any bit depth); memory: one batch of tiles plus the mask
        (and the resized image, at a scale other than 1).

        A blank image (:func:`~am.normalize.blank_values`: every pixel one value, or two adjacent
        levels), which the pipeline refuses, gets an all-0 mask without the model: a batch transform's
        records may be tiles of background, and one refused record would fail the whole job.
        """
        grey = to_grey(image, name=name)
        check_finite(grey, name)
        if (values := blank_values(grey)) is not None:
            self._check_size(grey.shape, scale=nominal_factor(self.scale), name=name)
            log.info("%s is blank (%s, %s pixels); its mask is empty", name, values, grey.dtype)
            return np.zeros(grey.shape, dtype=np.uint8)
        grey = normalize(grey, low_pct=self.low_pct, high_pct=self.high_pct, name=name)
        scale = resolve_scale(grey, self.scale, name=name)
        self._check_size(grey.shape, scale=scale, name=name)
        # The pipeline's tiling, per-tile masks and stitching, as am.evaluate measures them.
        mask = predict_image_mask(self.predictor, grey, tile_size=self.tile_size, overlap=self.tile_overlap,
                                  scale=scale)
        log.debug("%s: %d x %d px segmented at scale %g", name, grey.shape[1], grey.shape[0], scale)
        return mask.astype(np.uint8) * 255

    @staticmethod
    def _check_size(shape: tuple[int, ...], *, scale: float, name: str) -> None:
        # The sender of a record has no --scale and no groups: the advice is the one thing it can do.
        check_image_size(shape[0], shape[1], scale=scale, name=name, advice="send a larger crop of the acquisition")


__all__ = ["MODEL_FILE", "ImageSegmenter", "find_model"]
