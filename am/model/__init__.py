"""The segmentation model: checkpoint format, construction and batched inference.

Stage: the U-Net that turns normalised 8-bit tiles into 0/255 masks. A worker needs only::

    predictor = Predictor.from_checkpoint(default_model_path())
    masks = predictor.predict(tiles)      # uint8 (N, H, W) -> uint8 (N, H, W) in {0, 255}
"""

from am.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from am.model.build import build_model, load_model, write_test_checkpoint, write_untrained_checkpoint
    from am.model.checkpoint import ModelMeta, default_model_path, load_checkpoint, save_checkpoint
    from am.model.predict import Predictor

# Each name loads with its module on first use, not with the package: see am.lazy.
_EXPORTS = {
    "build_model": "am.model.build",
    "load_model": "am.model.build",
    "write_test_checkpoint": "am.model.build",
    "write_untrained_checkpoint": "am.model.build",
    "ModelMeta": "am.model.checkpoint",
    "default_model_path": "am.model.checkpoint",
    "load_checkpoint": "am.model.checkpoint",
    "save_checkpoint": "am.model.checkpoint",
    "Predictor": "am.model.predict",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
