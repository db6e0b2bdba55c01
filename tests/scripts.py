"""Scripts under benchmarks/ and examples/ are not a package; tests load them as modules to call
their functions directly.

    bench = load_script(REPO / "benchmarks" / "register_bench.py")
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path) -> ModuleType:
    """Import ``path`` as the module named by its stem (registered in ``sys.modules``, where
    dataclasses look their module up while the script's classes are built)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
