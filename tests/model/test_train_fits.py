"""A training step that cannot fit in memory is refused before any data is read, with a batch size that
might; the count it is judged by agrees with what a real step takes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import am.pseudolabel.__main__ as pseudo_cli
import am.train.__main__ as train_cli
import am.train.fits as fits
from am.imageio import write_png
from am.model.build import TEST_DECODER_CHANNELS, TEST_ENCODER
from am.model.checkpoint import ModelMeta

TINY = ModelMeta(encoder=TEST_ENCODER, decoder_channels=TEST_DECODER_CHANNELS)
GIB = 2**30

# Runs one float32 training step of the tiny model in a fresh process and prints the growth of its
# peak resident memory over that step, with the count of am.train.fits for the same step. The peak is
# VmHWM of /proc/self/status, the process's own: getrusage's ru_maxrss keeps, across exec, the peak of
# the process that started it (pytest's, gigabytes after hundreds of tests), and then does not grow.
_MEASURE = """
import json, sys, torch
from am.model.build import build_model, TEST_DECODER_CHANNELS, TEST_ENCODER
from am.model.checkpoint import ModelMeta
from am.train.fits import step_memory
torch.set_num_threads(1)
meta = ModelMeta(encoder=TEST_ENCODER, decoder_channels=TEST_DECODER_CHANNELS)
batch, crop = int(sys.argv[1]), int(sys.argv[2])
counted = step_memory(meta, crop)
model = build_model(meta).train()
x = torch.rand(batch, 1, crop, crop)
def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
before = peak()
model(x).sigmoid().mean().backward()
after = peak()
print(json.dumps({"measured": after - before, "activations": batch * counted.per_crop}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak memory from Linux's /proc")
def test_the_count_is_close_to_what_a_real_step_takes() -> None:
    result = subprocess.run([sys.executable, "-c", _MEASURE, "8", "512"], capture_output=True, text=True,
                            timeout=300, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    ratio = figures["measured"] / figures["activations"]
    # A refusal needs SURE_FRACTION of the count to exceed the free memory: that share must be taken for real.
    assert fits.SURE_FRACTION <= ratio <= 1.3, figures


def test_the_count_grows_with_the_batch_and_the_crop_area() -> None:
    small, large = fits.step_memory(TINY, 128), fits.step_memory(TINY, 256)
    assert large.per_crop == pytest.approx(4 * small.per_crop, rel=0.02)
    assert large.fixed == small.fixed > 0
    assert small.total(3) == small.fixed + 3 * small.per_crop
    assert fits.step_memory(TINY, 128, bytes_per_value=2).per_crop == small.per_crop // 2


def test_a_batch_beyond_the_free_memory_is_refused_with_one_that_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = fits.torch.device("cpu")
    need = fits.step_memory(TINY, 256)
    free = need.total(40)
    monkeypatch.setattr(fits, "free_memory", lambda device: free)
    assert fits.step_memory_problem(TINY, batch_size=40, crop=256, device=cpu) is None
    problem = fits.step_memory_problem(TINY, batch_size=400, crop=256, device=cpu)
    assert problem is not None
    assert "training with --batch-size 400 and --crop 256 needs about" in problem
    assert f"this machine has {free / GIB:.1f} GiB free; give --batch-size 40 or less, or a smaller --crop" in problem
    monkeypatch.setattr(fits, "free_memory", lambda device: need.fixed)
    problem = fits.step_memory_problem(TINY, batch_size=400, crop=256, device=cpu)
    assert problem is not None and "even one crop does not fit: give a smaller --crop" in problem
    monkeypatch.setattr(fits, "free_memory", lambda device: None)
    assert fits.step_memory_problem(TINY, batch_size=10**9, crop=256, device=cpu) is None


def test_free_memory_is_capped_by_a_cgroup_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fits, "_meminfo_available", lambda: 20 * GIB)
    monkeypatch.setattr(fits, "_cgroup_room", lambda: 3 * GIB)
    assert fits.free_memory(fits.torch.device("cpu")) == 3 * GIB
    monkeypatch.setattr(fits, "_cgroup_room", lambda: None)
    assert fits.free_memory(fits.torch.device("cpu")) == 20 * GIB
    assert fits._meminfo_available() is None or fits._meminfo_available() > 0


def test_am_train_refuses_a_batch_no_machine_holds_before_any_data_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_cli, "synthetic_images", lambda **kwargs: pytest.fail("images were rendered"))
    with pytest.raises(SystemExit) as stopped:
        train_cli.main(["--out", str(tmp_path / "m.pt"), "--synthetic", "4", "--encoder", TEST_ENCODER,
                        "--decoder-channels", ",".join(map(str, TEST_DECODER_CHANNELS)),
                        "--batch-size", "10000000", "--crop", "512", "--device", "cpu"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "training with --batch-size 10000000 and --crop 512 needs about" in err
    assert "give --batch-size" in err and not (tmp_path / "m.pt").exists()


def test_am_pseudolabel_refuses_a_batch_no_machine_holds_before_the_image_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pseudo_cli, "read_normalised", lambda *a, **k: pytest.fail("the image was read"))
    write_png(tmp_path / "labels" / "0_0.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(SystemExit) as stopped:
        pseudo_cli.main([str(tmp_path / "image.png"), "--labels", str(tmp_path / "labels"),
                         "--out", str(tmp_path / "out"), "--batch-size", "10000000", "--crop", "256"])
    assert stopped.value.code == 2
    assert "training the small model with --batch-size 10000000 and --crop 256" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
