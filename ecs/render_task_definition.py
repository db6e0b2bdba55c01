"""Fill ``${NAME}`` in the task definition template from the environment: ``python ecs/render_task_definition.py
TEMPLATE OUT``.

Every variable the template names must be set (ecs/README.md lists them): a missing one is named,
with all the others missing, and exit 2, rather than a KeyError traceback. The output is written
whole or not at all, so a failed render never leaves an empty file for the next command to register.
"""

from __future__ import annotations

import os
import string
import sys
import tempfile
from pathlib import Path


def render(template: str, environ: dict[str, str]) -> tuple[str, list[str]]:
    """The filled text and the names the template uses that ``environ`` lacks (in order of appearance)."""
    names = [m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(template)
             if m.group("named") or m.group("braced")]
    missing = list(dict.fromkeys(name for name in names if name not in environ))
    return string.Template(template).safe_substitute(environ), missing


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python ecs/render_task_definition.py TEMPLATE OUT", file=sys.stderr)
        return 2
    template, out = Path(argv[0]), Path(argv[1])
    text, missing = render(template.read_text(), dict(os.environ))
    if missing:
        print(f"error: set {', '.join(missing)} to render {template} (see ecs/README.md); {out} was not written",
              file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
