"""Semi-supervised labelling of one large image from a few labelled crops (``python -m am.pseudolabel``)."""

from am.pseudolabel.core import CropLabel, PseudoConfig, PseudoResult, confident_labels, pseudo_label

__all__ = ["CropLabel", "PseudoConfig", "PseudoResult", "confident_labels", "pseudo_label"]
