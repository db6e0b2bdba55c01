"""The environment a test hands the product: the developer's shell without its AM_* and AWS_* variables.

Those variables configure am-segm (``AM_CONFIG``, ``AM_BACKEND``, ...) and boto3 (``AWS_PROFILE``,
``AWS_REGION``, credentials): inherited from the shell that runs pytest, they would change what the
code under test does, or point it at a real account.

    subprocess.run([sys.executable, "-m", "am.pipeline", ...], env=clean_env(XDG_CACHE_HOME=str(cache)))

In-process tests get the same from the autouse fixture ``no_inherited_configuration`` of tests/conftest.py.
"""

from __future__ import annotations

import os

PRODUCT_PREFIXES = ("AM_", "AWS_")


def is_product_variable(name: str) -> bool:
    return name.startswith(PRODUCT_PREFIXES)


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without AM_* and AWS_* variables, then ``extra`` added (which may set some again)."""
    env = {name: value for name, value in os.environ.items() if not is_product_variable(name)}
    env.update(extra)
    return env
