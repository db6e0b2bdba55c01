"""SageMaker serving: the container contract (``/ping``, ``/invocations``) around in-process segmentation.

``python -m am.serve serve`` is what SageMaker runs in the container (port 8080, model from
/opt/ml/model); in code::

    segmenter = ImageSegmenter(Predictor.from_checkpoint(find_model(model_dir)))
    app = create_app(segmenter)                   # an ASGI app for uvicorn
"""

from am.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from am.serve.app import create_app
    from am.serve.segment import ImageSegmenter, find_model

# Each name loads with its module on first use, not with the package: see am.lazy.
_EXPORTS = {
    "create_app": "am.serve.app",
    "ImageSegmenter": "am.serve.segment",
    "find_model": "am.serve.segment",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["ImageSegmenter", "create_app", "find_model"]
