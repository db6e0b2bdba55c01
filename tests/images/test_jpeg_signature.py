"""A JPEG saved under a .tif or .png name is called a JPEG, with a conversion that works, before any work
starts: not a TIFF or PNG reader's "cannot be read"."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from am.dataset import DatasetLayout
from am.errors import InputError
from am.imageio import check_complete, read_header, read_image
from am.prepare import check_group_image
from am.settings import Settings

IMAGE = np.random.default_rng(5).integers(0, 256, (96, 128), dtype=np.uint8)


def _jpeg() -> bytes:
    ok, data = cv2.imencode(".jpg", IMAGE)
    assert ok
    return data.tobytes()


def _group_image(root: Path, name: str, data: bytes) -> DatasetLayout:
    """A dataset under ``root`` whose one group, ``g``, holds ``data`` as ``name``."""
    (root / "source" / "g").mkdir(parents=True)
    (root / "source" / "g" / name).write_bytes(data)
    return DatasetLayout(root)


def _run_advice(message: str) -> None:
    """Run the ``python -c "..."`` conversion the message gives, with this interpreter."""
    command = re.search(r"e\.g\. (python -c .+?), (?:then remove|which rewrites)", message)
    assert command is not None, message
    argv = shlex.split(command.group(1))
    subprocess.run([sys.executable, *argv[1:]], check=True, timeout=60)


@pytest.mark.parametrize("name", ["x.tif", "x.TIFF"])
def test_a_jpeg_named_tif_is_called_a_jpeg_and_its_conversion_works(tmp_path: Path, name: str) -> None:
    layout = _group_image(tmp_path, name, _jpeg())
    path = layout.source_image("g")
    words = rf"x\.{name[2:]} is a JPEG file, not the \.{name[2:]} its name says.*convert it to PNG, e\.g\. .*" \
            rf"then remove x\.{name[2:]}, keeping only x\.png"
    with pytest.raises(InputError, match=words) as caught:
        check_group_image(layout, "g", settings=Settings())
    assert caught.value.reason == f"it is a JPEG file named .{name[2:]}"
    for read in (read_header, check_complete, read_image):
        with pytest.raises(InputError, match=words):
            read(path)
    _run_advice(str(caught.value))
    path.unlink()
    check_group_image(layout, "g", settings=Settings())  # the converted file is taken as it stands
    expected = cv2.imdecode(np.frombuffer(_jpeg(), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(read_image(layout.source_image("g")), expected)


def test_a_jpeg_named_png_is_called_a_jpeg_and_converted_in_place(tmp_path: Path) -> None:
    layout = _group_image(tmp_path, "x.png", _jpeg())
    path = layout.source_image("g")
    with pytest.raises(InputError, match=r"x\.png is a JPEG file, not the \.png its name says.*rewrites it in place"
                       ) as caught:
        read_image(path)
    _run_advice(str(caught.value))
    check_group_image(layout, "g", settings=Settings())
    assert read_image(path).shape == IMAGE.shape
