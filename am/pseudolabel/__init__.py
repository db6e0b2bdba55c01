"""Semi-supervised labelling of one large image from a few labelled crops (``python -m am.pseudolabel``).

The names below load with their module (:mod:`am.pseudolabel.core`, which loads torch) on first use,
not with the package: ``python -m am.pseudolabel`` imports the package before its ``__main__``, whose
start-up catches a Ctrl-C while torch loads (see :mod:`am.startup` and :mod:`am.lazy`).
"""

from am.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from am.pseudolabel.core import CropLabel, PseudoConfig, PseudoResult, confident_labels, pseudo_label

__all__ = ["CropLabel", "PseudoConfig", "PseudoResult", "confident_labels", "pseudo_label"]

__getattr__, __dir__ = lazy_exports(__name__, {name: "am.pseudolabel.core" for name in __all__})
