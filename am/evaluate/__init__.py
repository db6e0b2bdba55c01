"""Quality of a model on a labelled set: pixel Dice/IoU and object F1 (``python -m am.evaluate``).

The names load with :mod:`am.evaluate.metrics` (numpy, OpenCV) on first use, not with the package, so that
``python -m am.evaluate`` reaches its own start-up before they load (see :mod:`am.lazy`).
"""

from am.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from am.evaluate.metrics import Scores, match_objects, score

__all__ = ["Scores", "match_objects", "score"]

__getattr__, __dir__ = lazy_exports(__name__, {name: "am.evaluate.metrics" for name in __all__})
