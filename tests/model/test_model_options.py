"""One rule per model option, checked before any work: the encoder smp builds, the smallest tile size.

am.train, am.pseudolabel and checkpoints share them (``am.model.checkpoint``), so an encoder smp
cannot build and a tile size validation cannot use are refused up front, not after images were
rendered or an epoch trained.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import am.pseudolabel.core as pseudo
import am.train.__main__ as train_cli
from am.errors import InputError
from am.evaluate.run import evaluate
from am.model.build import TEST_DECODER_CHANNELS, TEST_ENCODER, write_untrained_checkpoint
from am.model.predict import Predictor
from am.pseudolabel.core import PseudoConfig
from am.train.data import synthetic_images
from am.train.loop import validate

UNBUILDABLE = "tu-vit_tiny_patch16_224"  # timm knows it; smp's U-Net cannot use it (no feature pyramid)
ONE_SIZE = "tu-swin_tiny_patch4_window7_224"  # builds, but asserts that its input is 224 px


@pytest.mark.parametrize(("args", "words"), [
    (["--encoder", UNBUILDABLE], f"--encoder/--encoder-depth/--decoder-channels: segmentation-models-pytorch "
                                 f"cannot build a Unet with encoder '{UNBUILDABLE}'"),
    (["--encoder", "resnet9000"], "encoder 'resnet9000' is unknown to segmentation-models-pytorch"),
    (["--tile-size", "32"], "--tile-size 32 must be a multiple of 32 and at least 64"),
    (["--encoder", ONE_SIZE], f"a Unet with encoder '{ONE_SIZE}' cannot segment 256 x 256 px inputs (--crop "
                              "256): AssertionError: Input height (256) doesn't match model (224)"),
    (["--encoder", ONE_SIZE, "--crop", "224"], "cannot segment 512 x 512 px inputs (--tile-size 512)"),
    (["--encoder", ONE_SIZE, "--crop", "256", "--tile-size", "256"], "256 x 256 px inputs (--tile-size 256, --crop "
                                                                     "256)"),
])
def test_train_refuses_a_model_it_cannot_build_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture, args, words) -> None:
    monkeypatch.setattr(train_cli, "synthetic_images", lambda *a, **k: pytest.fail("images rendered before the "
                                                                                    "options were checked"))
    with pytest.raises(SystemExit) as stopped:
        train_cli.main(["--out", str(tmp_path / "m.pt"), "--synthetic", "2", *args])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and words in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_pseudolabel_checks_that_both_models_build_before_step_one() -> None:
    for config, which in ((PseudoConfig(big_encoder=UNBUILDABLE), "big"),
                          (PseudoConfig(small_encoder=UNBUILDABLE), "small")):
        with pytest.raises(InputError, match=f"the {which} model: segmentation-models-pytorch cannot build a Unet "
                                             f"with encoder '{UNBUILDABLE}'"):
            pseudo.check_config(config)
    with pytest.raises(InputError, match=f"the big model: a Unet with encoder '{ONE_SIZE}' cannot segment"):
        pseudo.check_config(PseudoConfig(big_encoder=ONE_SIZE))
    pseudo.check_config(PseudoConfig())


@pytest.fixture(scope="module")
def small_tile_predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    """A checkpoint made for 128 px tiles, as am.train --tile-size 128 writes it."""
    path = write_untrained_checkpoint(tmp_path_factory.mktemp("t128") / "t128.pt", encoder=TEST_ENCODER,
                                      decoder_channels=TEST_DECODER_CHANNELS, tile_size=128, storage="fp16")
    return Predictor.from_checkpoint(path, device="cpu", threads=1, postprocess=False)


def test_training_validates_on_small_tiles(small_tile_predictor: Predictor) -> None:
    # am.train --tile-size 128 trained its first epoch, then stopped in validation (a fixed overlap of 64).
    items = synthetic_images(count=1, size=192, seed=4)
    metrics, per_image = validate(small_tile_predictor, items, tile_size=128)
    assert len(per_image) == 1 and 0.0 <= metrics["dice"] <= 1.0


def test_evaluate_scores_a_checkpoint_made_for_small_tiles(small_tile_predictor: Predictor) -> None:
    # It passed python -m am.model, then am.evaluate refused it.
    results = evaluate(small_tile_predictor, synthetic_images(count=1, size=192, seed=5))
    assert len(results) == 1 and 0.0 <= results[0].scores.dice <= 1.0
