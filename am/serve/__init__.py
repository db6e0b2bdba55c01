"""SageMaker serving: the container contract (``/ping``, ``/invocations``) around in-process segmentation.

``python -m am.serve serve`` is what SageMaker runs in the container (port 8080, model from
/opt/ml/model); in code::

    segmenter = ImageSegmenter(Predictor.from_checkpoint(find_model(model_dir)))
    app = create_app(segmenter)                   # an ASGI app for uvicorn
"""

from am.serve.app import create_app
from am.serve.segment import ImageSegmenter, find_model

__all__ = ["ImageSegmenter", "create_app", "find_model"]
