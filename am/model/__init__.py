"""The segmentation model: checkpoint format, construction and batched inference.

Stage: the U-Net that turns normalised 8-bit tiles into 0/255 masks. A worker needs only::

    predictor = Predictor.from_checkpoint(default_model_path())
    masks = predictor.predict(tiles)      # uint8 (N, H, W) -> uint8 (N, H, W) in {0, 255}
"""

from am.model.build import build_model, load_model, write_test_checkpoint, write_untrained_checkpoint
from am.model.checkpoint import ModelMeta, default_model_path, load_checkpoint, save_checkpoint
from am.model.predict import Predictor

__all__ = [
    "ModelMeta",
    "Predictor",
    "build_model",
    "default_model_path",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "write_test_checkpoint",
    "write_untrained_checkpoint",
]
