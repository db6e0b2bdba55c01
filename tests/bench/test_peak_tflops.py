"""The data-sheet peak of a GPU is found by its name's words, not by substrings, and only where the GPU has one.

"L4" was found in "NVIDIA L40S" (121 TFLOP/s reported for a 362 TFLOP/s card), and the bf16
table copied the fp16 one, giving the T4, which has no bf16 tensor cores, a bf16 peak.
"""

from __future__ import annotations

import pytest

from am.bench.model import peak_tflops


@pytest.mark.parametrize(("name", "fp16", "bf16"), [
    ("NVIDIA L4", 121.0, 121.0),
    ("NVIDIA L40S", 362.0, 362.0),
    ("NVIDIA L40", None, None),            # not in the table: no peak rather than the L4's
    ("Tesla T4", 65.0, None),
    ("NVIDIA A100-SXM4-80GB", 312.0, 312.0),
    ("NVIDIA A100-PCIE-40GB", 312.0, 312.0),
    ("NVIDIA H100 80GB HBM3", 989.0, 989.0),
    ("NVIDIA H100 PCIe", 756.0, 756.0),
    ("NVIDIA H100 NVL", 835.0, 835.0),
    ("NVIDIA H200", 989.0, 989.0),
    ("NVIDIA H200 NVL", 835.0, 835.0),     # the longest name that matches, not the first
    ("NVIDIA GeForce RTX 4090", None, None),
    ("x86_64 CPU, 2 torch thread(s)", None, None),
])
def test_peaks_match_whole_words_of_the_name(name: str, fp16: float | None, bf16: float | None) -> None:
    assert peak_tflops(name, "fp16") == fp16
    assert peak_tflops(name, "bf16") == bf16
    assert peak_tflops(name, "fp32") is None
