"""Names a package exports, loaded with their module on first use rather than with the package.

``python -m am.<command>`` imports the package before its ``__main__``, and only ``__main__`` can catch a
Ctrl-C while the heavy modules (numpy, OpenCV, torch) load (see :mod:`am.startup`). A package whose
``__init__`` imported its modules would load them out of that reach, and a Ctrl-C in that time would end
in a traceback. This module imports only what the interpreter has loaded already.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing itself is not loaded yet: it is imported for the type checkers only
if TYPE_CHECKING:
    from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` (PEP 562) for ``package`` that load each exported name from
    its module (``exports``: name -> module) on first use, and keep it in the package for later ones."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
