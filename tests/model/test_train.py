"""Training: the loss falls on CPU in a few steps, runs write checkpoints and logs, resume continues."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from am.errors import CheckpointError, InputError
from am.imageio import write_png
from am.model.build import build_model
from am.model.checkpoint import ModelMeta, load_checkpoint
from am.model.masks import DEFAULT_MIN_MARK_FRACTION, DEFAULT_MIN_MARK_PX
from am.model.predict import prepare_input
from am.model.separate import DEFAULT_SEED_THRESHOLD
from am.train.augment import lose_resolution
from am.train.data import CropDataset, Labelled, load_split, split_files, synthetic_images, weigh_gaps
from am.train.loop import TrainConfig, loss_fn, train
from am.train.runfiles import metrics_path, state_path

REPO = Path(__file__).resolve().parents[2]
TINY = {"encoder": "tu-mobilenetv3_small_100", "encoder_depth": 5, "decoder_channels": (32, 16, 8, 8, 4)}


@pytest.fixture(scope="module")
def images() -> list[Labelled]:
    return synthetic_images(count=4, size=128, seed=11)


def test_a_few_steps_lower_the_loss(images: list[Labelled]) -> None:
    torch.manual_seed(0)
    meta = ModelMeta(**TINY)
    model = build_model(meta).train()
    dataset = CropDataset(images[:2], crop=64, length=4, seed=0, augment=False)
    image, mask, weight = (torch.stack(t) for t in zip(*[dataset[i] for i in range(4)], strict=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = loss_fn(model(prepare_input(image, meta)), mask, weight, dice_weight=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_every_parameter_receives_a_gradient(images: list[Labelled]) -> None:
    meta = ModelMeta(**TINY)
    model = build_model(meta).train()
    dataset = CropDataset(images, crop=64, length=2, seed=0)
    image, mask, weight = (torch.stack(t) for t in zip(*[dataset[i] for i in range(2)], strict=True))
    loss_fn(model(prepare_input(image, meta)), mask, weight, dice_weight=1.0).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    # The last layer, which the original project never trained, is among them.
    assert any(name.startswith("segmentation_head") for name, _ in model.named_parameters())


def test_crops_are_fresh_each_epoch_and_reproducible(images: list[Labelled]) -> None:
    dataset = CropDataset(images, crop=64, length=3, seed=5)
    first = dataset[0][0]
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[0][0])
    dataset.set_epoch(0)
    assert torch.equal(first, dataset[0][0])


def test_low_resolution_softens_the_image_only_and_leaves_other_runs_unchanged(images: list[Labelled]) -> None:
    plain = CropDataset(images, crop=96, length=6, seed=3)
    never = CropDataset(images, crop=96, length=6, seed=3, low_resolution=0.0)
    always = CropDataset(images, crop=96, length=6, seed=3, low_resolution=1.0, low_resolution_factor=(2.0, 2.0))
    detail_kept = []
    for k in range(6):
        image, mask, weight = plain[k]
        assert all(torch.equal(a, b) for a, b in zip((image, mask, weight), never[k], strict=True))
        soft, soft_mask, soft_weight = always[k]
        # Same crop, same truth: only the picture lost its finest detail.
        assert torch.equal(mask, soft_mask) and torch.equal(weight, soft_weight)
        assert soft.shape == image.shape and soft.dtype == image.dtype
        sharp_detail = np.var(cv2.Laplacian(image[0].numpy().astype(np.float32), cv2.CV_32F))
        soft_detail = np.var(cv2.Laplacian(soft[0].numpy().astype(np.float32), cv2.CV_32F))
        detail_kept.append(soft_detail / sharp_detail)
        assert abs(float(soft.float().mean()) - float(image.float().mean())) < 3
    # A crop already blurred by the photometric step has less left to lose.
    assert max(detail_kept) < 0.8 and np.median(detail_kept) < 0.25, detail_kept


def test_lose_resolution_keeps_the_size_of_odd_shapes() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(37, 53), dtype=np.uint8)
    out = lose_resolution(np.random.default_rng(1), image, factor=(1.5, 2.5))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out.std() < image.std()


def test_weight_zero_pixels_do_not_count() -> None:
    logits = torch.tensor([[[[5.0, -5.0]]]])
    target = torch.tensor([[[[1.0, 1.0]]]])
    ignore_second = torch.tensor([[[[1.0, 0.0]]]])
    assert loss_fn(logits, target, ignore_second, dice_weight=1.0) < 0.05
    assert loss_fn(logits, target, torch.ones_like(target), dice_weight=1.0) > 1.0


def test_gap_weights_fall_on_the_tissue_between_two_marks_only() -> None:
    mask = np.zeros((12, 20), np.uint8)
    mask[3:9, 2:8] = 1  # mark A
    mask[3:9, 9:15] = 1  # mark B, one pixel of tissue from A
    weight = np.ones_like(mask)
    weight[8:12, 8] = 0  # unknown pixels stay unknown, gap or not
    item = Labelled.from_arrays(np.zeros_like(mask), mask, name="two marks", weight=weight)
    weighted = weigh_gaps(item, 5).weight
    # Tissue within 2 px (chessboard distance) of both marks, known pixels only.
    rows, cols = np.indices(mask.shape)
    near_a = (np.abs(rows - np.clip(rows, 3, 8)) <= 2) & (np.abs(cols - np.clip(cols, 2, 7)) <= 2)
    near_b = (np.abs(rows - np.clip(rows, 3, 8)) <= 2) & (np.abs(cols - np.clip(cols, 9, 14)) <= 2)
    gap = near_a & near_b & (mask == 0) & (weight > 0)
    assert gap[:, 8].sum() == 7 and gap.sum() == 7 + 4 * 2  # the column between them and the corners
    np.testing.assert_array_equal(weighted == 5, gap)
    assert weighted[8:12, 8].tolist() == [0, 0, 0, 0]
    assert (weighted[mask > 0] == 1).all() and weighted[6, 17] == 1  # marks and tissue beside one mark
    np.testing.assert_array_equal(weighted[:, 16:], 1)
    assert weigh_gaps(item, 1) is item
    one_mark = Labelled.from_arrays(np.zeros_like(mask), mask * (np.arange(20) < 8), name="one mark")
    assert (weigh_gaps(one_mark, 5).weight == 1).all()
    with pytest.raises(InputError, match="gap weight"):
        weigh_gaps(item, 0)


def test_train_writes_checkpoint_logs_and_resumes(tmp_path: Path, images: list[Labelled]) -> None:
    out = tmp_path / "m.pt"
    config = TrainConfig(out=out, **TINY, epochs=2, steps_per_epoch=2, batch_size=2, crop=64, warmup_steps=1,
                         threads=1, keep_state=True, data_summary={"synthetic": 4})
    result = train(config, images[:3], images[3:])
    meta, _ = load_checkpoint(out)
    assert meta.trained and meta.encoder == TINY["encoder"] and meta.validation["epoch"] == result.best_epoch
    assert set(meta.validation) >= {"dice", "iou", "f1", "precision", "recall"}
    assert meta.training["data"] == {"synthetic": 4} and meta.training["seed"] == 0
    with metrics_path(out).open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert state_path(out).is_file()
    # Other options would be ignored (the learning rate comes back from the state) or break the run.
    for change, named in (({"lr": 0.5}, "lr 0.002 -> 0.5"), ({"decoder_channels": (32, 16, 8, 8, 8)}, "decoder"),
                          ({"data_summary": {"synthetic": 5}}, "data")):
        other = TrainConfig(**{**config.__dict__, **change, "epochs": 3, "resume": True})
        with pytest.raises(CheckpointError, match=r"resume state .*m.resume belongs to a run with other options \("
                                                  + named):
            train(other, images[:3], images[3:])
    # Resume to a longer schedule: only the new epoch runs and the log grows.
    longer = TrainConfig(**{**config.__dict__, "epochs": 3, "resume": True, "keep_state": False})
    resumed = train(longer, images[:3], images[3:])
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert not state_path(out).exists()  # a finished run drops its large resume state
    with metrics_path(out).open() as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3]


def test_init_starts_from_a_checkpoints_weights_and_refuses_another_architecture(
        tmp_path: Path, images: list[Labelled]) -> None:
    first = tmp_path / "first.pt"
    base = dict(**TINY, epochs=1, steps_per_epoch=1, batch_size=2, crop=64, warmup_steps=0, threads=1)
    train(TrainConfig(out=first, **base, half=False), images[:3], images[3:])
    _, start = load_checkpoint(first)
    # With a learning rate of 0 no parameter moves (batch-norm statistics still do, in training mode).
    second = tmp_path / "second.pt"
    train(TrainConfig(out=second, **base, half=False, lr=0.0, init=first, seed=3), images[:3], images[3:])
    meta, weights = load_checkpoint(second)
    learnt = [k for k in start if "running_" not in k and "num_batches" not in k]
    assert len(learnt) > 50 and all(torch.equal(weights[k], start[k]) for k in learnt)
    assert meta.training["init"] == "first.pt"
    other = TrainConfig(out=tmp_path / "x.pt", **{**base, "decoder_channels": (64, 32, 16, 8, 4)}, init=first)
    with pytest.raises(InputError, match=r"--init .*first.pt is a Unet/tu-mobilenetv3_small_100 .*decoder \[32"):
        train(other, images[:3], images[3:])


def test_partial_init_widens_a_decoder_or_keeps_what_fits(
        tmp_path: Path, images: list[Labelled], caplog: pytest.LogCaptureFixture) -> None:
    first = tmp_path / "first.pt"
    base = dict(**TINY, epochs=1, steps_per_epoch=1, batch_size=2, crop=64, warmup_steps=0, threads=1)
    train(TrainConfig(out=first, **base, half=False), images[:3], images[3:])
    _, start = load_checkpoint(first)
    wider = (*TINY["decoder_channels"][:3], 16, 8)
    assert wider != tuple(TINY["decoder_channels"])
    second = tmp_path / "wider.pt"
    with caplog.at_level(logging.INFO, logger="am.train.init"):
        train(TrainConfig(out=second, **{**base, "decoder_channels": wider}, half=False, lr=0.0, init=first,
                          init_partial=True, seed=3), images[:3], images[3:])
    meta, weights = load_checkpoint(second)
    assert tuple(meta.decoder_channels) == wider
    assert "decoder [32, 16, 8, 8, 4] widened to [32, 16, 8, 16, 8]" in caplog.text
    # Nothing trained is lost (lr 0): the unchanged stages come back as they were, the widened ones
    # hold their trained weights in their old place and no link from a new channel into an old one.
    assert torch.equal(weights["decoder.blocks.0.conv1.0.weight"], start["decoder.blocks.0.conv1.0.weight"])
    assert torch.equal(weights["decoder.blocks.4.conv2.0.weight"][:4, :4], start["decoder.blocks.4.conv2.0.weight"])
    assert torch.count_nonzero(weights["decoder.blocks.4.conv2.0.weight"][:4, 4:]) == 0
    assert torch.equal(weights["segmentation_head.0.weight"][:, :4], start["segmentation_head.0.weight"])

    caplog.clear()
    narrower = (*TINY["decoder_channels"][:4], 2)
    third = tmp_path / "narrower.pt"
    with caplog.at_level(logging.INFO, logger="am.train.init"):
        train(TrainConfig(out=third, **{**base, "decoder_channels": narrower}, half=False, lr=0.0, init=first,
                          init_partial=True, seed=3), images[:3], images[3:])
    _, weights = load_checkpoint(third)
    learnt = [k for k in weights if "running_" not in k and "num_batches" not in k]
    kept = [k for k in learnt if k in start and start[k].shape == weights[k].shape]
    fresh = [k for k in learnt if k not in kept]
    # A narrower stage cannot hold what was learnt: it and the head start afresh, the rest is kept.
    assert any(k.startswith("encoder.") for k in kept) and any(k.startswith("decoder.blocks.3") for k in kept)
    assert all(torch.equal(weights[k], start[k]) for k in kept)
    assert fresh and all(k.startswith(("decoder.blocks.4", "segmentation_head")) for k in fresh)
    assert "fresh: decoder.blocks.4" in caplog.text
    other_encoder = TrainConfig(out=tmp_path / "x.pt", **{**base, "encoder": "tu-mobilenetv3_large_100"}, init=first,
                                init_partial=True)
    with pytest.raises(InputError, match=r"--init .*first.pt is a Unet/tu-mobilenetv3_small_100"):
        train(other_encoder, images[:3], images[3:])


def test_folder_layout_and_cli(tmp_path: Path, images: list[Labelled]) -> None:
    root = tmp_path / "data"
    for split, chosen in (("train", images[:3]), ("valid", images[3:])):
        for i, item in enumerate(chosen):
            write_png(root / split / "synthetic" / "g1" / "source" / f"{i:03d}.png", item.image)
            write_png(root / split / "synthetic" / "g1" / "mask" / f"{i:03d}.png", item.mask * 255)
    loaded = load_split(root, "train")
    assert len(loaded) == 3 and np.array_equal(loaded[0].mask, images[0].mask)
    files = split_files(root, "valid")  # found and paired, read only when asked
    assert [f.name for f in files] == [f"valid/synthetic/g1/source/{i:03d}.png" for i in range(len(images[3:]))]
    assert np.array_equal(files[0].read().image, images[3].image)
    out = tmp_path / "cli.pt"
    cmd = [sys.executable, "-m", "am.train", "--data", str(root), "--encoder", TINY["encoder"], "--encoder-depth",
           "5", "--decoder-channels", "32,16,8,8,4", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
           "--crop", "64", "--threads", "1", "--gap-weight", "5", "--low-resolution", "0.5", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best epoch 1" in done.stdout and out.is_file()
    written = load_checkpoint(out)[0]
    assert written.training["data"]["gap_weight"] == 5 and written.training["low_resolution"] == 0.5
    # New models cut touching marks apart and drop specks by default.
    assert (written.seed_threshold, written.min_mark_px, written.min_mark_fraction) == (
        DEFAULT_SEED_THRESHOLD, DEFAULT_MIN_MARK_PX, DEFAULT_MIN_MARK_FRACTION)
    no_gain = subprocess.run([*cmd, "--gap-weight", "0"], cwd=REPO, capture_output=True, text=True, check=False)
    assert no_gain.returncode == 2 and "--gap-weight" in no_gain.stderr
    no_init = subprocess.run([*cmd, "--init-partial"], cwd=REPO, capture_output=True, text=True, check=False)
    assert no_init.returncode == 2 and "--init-partial needs --init" in no_init.stderr
    for chance in ("1.5", "-0.1", "nan"):
        bad_chance = subprocess.run([*cmd, "--low-resolution", chance], cwd=REPO, capture_output=True, text=True,
                                    check=False)
        assert bad_chance.returncode == 2 and "--low-resolution" in bad_chance.stderr, chance
    no_blobs = subprocess.run([*cmd, "--synthetic-blobs", "-1"], cwd=REPO, capture_output=True, text=True,
                              check=False)
    assert no_blobs.returncode == 2 and "--synthetic-blobs" in no_blobs.stderr
    for mix in ("bright", "bright=1,purple=2", "rim=0", "rim=1,rim=2"):
        bad_mix = subprocess.run([*cmd, "--synthetic-polarities", mix], cwd=REPO, capture_output=True, text=True,
                                 check=False)
        assert bad_mix.returncode == 2 and "--synthetic-polarities" in bad_mix.stderr, mix
    for level in ("0.4", "1", "nan", "high"):
        bad_seed = subprocess.run([*cmd, "--seed-threshold", level], cwd=REPO, capture_output=True, text=True,
                                  check=False)
        assert bad_seed.returncode == 2 and "--seed-threshold" in bad_seed.stderr, level
    plain_out = tmp_path / "plain.pt"
    plain = subprocess.run([*cmd[:-1], str(plain_out), "--seed-threshold", "off", "--min-mark-px", "0",
                            "--min-mark-fraction", "0", "--steps-per-epoch", "1"], cwd=REPO, capture_output=True,
                           text=True, check=False)
    assert plain.returncode == 0, plain.stderr[-2000:]
    plain_meta = load_checkpoint(plain_out)[0]
    assert (plain_meta.seed_threshold, plain_meta.min_mark_px, plain_meta.min_mark_fraction) == (None, 0, 0.0)
    assert not plain_meta.postprocesses
    negative = subprocess.run([*cmd, "--min-mark-px", "-1"], cwd=REPO, capture_output=True, text=True, check=False)
    assert negative.returncode == 2 and "--min-mark-px" in negative.stderr
    for fraction in ("-0.1", "1", "nan"):
        bad_fraction = subprocess.run([*cmd, "--min-mark-fraction", fraction], cwd=REPO, capture_output=True,
                                      text=True, check=False)
        assert bad_fraction.returncode == 2 and "--min-mark-fraction" in bad_fraction.stderr, fraction
    bad = subprocess.run([*cmd[:3], "--data", str(tmp_path / "nothing"), "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "does not exist" in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "am.train", "--out", str(out)], cwd=REPO, capture_output=True,
                           text=True, check=False)
    assert usage.returncode == 2


def test_production_encoder_builds_and_steps_on_cpu() -> None:
    """The GPU recipe (resnext50_32x4d) uses the same code: one step on a tiny crop here."""
    meta = ModelMeta(encoder="resnext50_32x4d", encoder_depth=5, decoder_channels=(256, 128, 64, 32, 16))
    model = build_model(meta).train()
    x = prepare_input(torch.randint(0, 255, (2, 1, 64, 64), dtype=torch.uint8), meta)
    target = torch.zeros(2, 1, 64, 64)
    loss = loss_fn(model(x), target, torch.ones_like(target), dice_weight=1.0)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("args", "words"), [
    (["--pitch-min", "90"], "--pitch-min 90.0 and --pitch-max 85.0 must be finite numbers of pixels > 0"),
    (["--pitch-min", "0"], "--pitch-min 0.0 and --pitch-max 85.0"),
    (["--pitch-min", "5"], "--pitch-min 5 px draws marks too small to show"),  # as am.synth says
    (["--pitch-max", "nan"], "--pitch-max nan"),
    (["--lr", "-1"], "--lr -1.0 must be a finite number > 0"),
    (["--lr", "nan"], "--lr nan must be a finite number > 0"),
    (["--weight-decay", "-1"], "--weight-decay -1.0 must be a finite number >= 0"),
    (["--workers", "-1"], "--workers -1 must be >= 0"),
    (["--synthetic-size", "0"], "--synthetic-size 0 must be at least 64"),
    (["--scale-max", "inf"], "--scale-max inf must be finite"),
    (["--tile-size", "100"], "--tile-size 100 must be a multiple of 32"),
])
def test_bad_options_are_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture, args, words) -> None:
    import am.train.__main__ as train_cli

    with pytest.raises(SystemExit) as stopped:
        train_cli.main(["--out", str(tmp_path / "m.pt"), "--synthetic", "2", *args])
    assert stopped.value.code == 2 and words in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_an_out_path_that_is_a_folder_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import am.train.__main__ as train_cli

    (tmp_path / "m.pt").mkdir()
    with pytest.raises(SystemExit) as stopped:
        train_cli.main(["--out", str(tmp_path / "m.pt"), "--synthetic", "2"])
    assert stopped.value.code == 2 and "--out: " in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
