"""Quality of a model on a labelled set: pixel Dice/IoU and object F1 (``python -m am.evaluate``)."""

from am.evaluate.metrics import Scores, match_objects, score

__all__ = ["Scores", "match_objects", "score"]
