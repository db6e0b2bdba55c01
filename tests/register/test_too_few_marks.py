"""The error for too few marks says why components were left out, and hints at a blob only where
a large component could have set the typical mark area."""

from __future__ import annotations

import numpy as np
import pytest

from am.errors import RegistrationError
from am.register import register_mask


def test_lines_one_pixel_thin_are_reported_as_thin_not_as_small():
    mask = np.zeros((200, 200), np.uint8)
    for i in range(10):
        mask[10 + 15 * i, 20:60] = 255  # 40 px each: left out by the opening, not by their area
    mask[100:110, 100:110] = 255
    mask[100:110, 140:150] = 255
    with pytest.raises(RegistrationError) as caught:
        register_mask(mask, rows=3, cols=3)
    message = str(caught.value)
    assert "10 of its 12 components were left out as thinner than 2 px" in message, message
    assert "under 15 px" not in message and "blob" not in message


def test_specks_only_give_no_blob_hint_and_no_typical_area_of_zero():
    mask = np.zeros((120, 120), np.uint8)
    mask[2::6, 2::6] = 255  # single pixels
    with pytest.raises(RegistrationError) as caught:
        register_mask(mask, rows=3, cols=3)
    message = str(caught.value)
    assert "thinner than 2 px" in message, message
    assert "blob" not in message and "taken as 0 px" not in message


def test_a_blob_that_set_the_typical_area_is_named_with_its_size():
    mask = np.zeros((300, 300), np.uint8)
    mask[150:290, 150:290] = 255
    for x in (20, 60, 100):
        mask[26:34, x - 4 : x + 4] = 255
    with pytest.raises(RegistrationError, match=r"the largest holds 19600 px: is it a blob or fold"):
        register_mask(mask, rows=None, cols=None)
