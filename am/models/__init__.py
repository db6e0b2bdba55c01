"""The models shipped inside the package.

Named here, in a module that imports no torch, so code that only needs to find the shipped model
(the orchestrator deciding what workers load) does not pay seconds of start-up for it.
"""

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent / "default.pt"
