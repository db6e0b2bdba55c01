"""am.startup's answer to a Ctrl-C while a command's module loads, when a program imported the module."""

from __future__ import annotations

import pytest

from am.startup import interrupted_while_loading


def test_a_ctrl_c_while_an_imported_command_loads_goes_on_up_to_the_program() -> None:
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as raised:
        try:
            raise interrupt
        except KeyboardInterrupt:
            interrupted_while_loading("am.pipeline.__main__", "am.pipeline")
    assert raised.value is interrupt  # the program's own Ctrl-C, not another one
