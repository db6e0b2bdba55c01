"""Which logging handlers are in place while a command does its work: a command that shows a tqdm
bar must route log lines through tqdm, or they end up glued onto the bar's line.

    handlers = handlers_during(monkeypatch, am.evaluate.run, "predict_image_mask")
    ...run the command...
    assert "_TqdmLoggingHandler" in handlers
"""

from __future__ import annotations

import logging
from types import ModuleType

import pytest


def handlers_during(monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str) -> list[str]:
    """The root logger's handler class names, noted at every call of ``module.name`` (which still runs)."""
    handlers: list[str] = []
    real = getattr(module, name)

    def noting(*args, **kwargs):
        handlers.extend(type(h).__name__ for h in logging.getLogger().handlers)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, noting)
    return handlers
