"""Semi-supervised labelling of one large image from a few labelled crops (``python -m am.pseudolabel``).

The names below load with their module (:mod:`am.pseudolabel.core`, which loads torch) on first use,
not with the package: ``python -m am.pseudolabel`` imports the package before its ``__main__``, whose
start-up catches a Ctrl-C while torch loads (see :mod:`am.startup`); here one would end in a traceback.
"""

__all__ = ["CropLabel", "PseudoConfig", "PseudoResult", "confident_labels", "pseudo_label"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from am.pseudolabel import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
