"""The training loop: U-Net, BCE + Dice loss, AdamW with warm-up and cosine decay, validation per epoch.

Every parameter is trained (decoder, encoder and the final layer). Each epoch draws fresh
random crops, then validates whole images at the checkpoint's own threshold with per-image
Dice/IoU and object F1; the best epoch is written to ``out`` as a checkpoint, and a resume
state (weights, optimiser, schedule, history and a copy of the best epoch's checkpoint) is written
beside it after every epoch::

    result = train(config, train_items, valid_items)
    result.best_metrics["f1"]
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from am.errors import CheckpointError, InputError
from am.evaluate.metrics import Scores, score
from am.files import write_atomic
from am.model.build import build_model
from am.model.checkpoint import ModelMeta, load_checkpoint, save_checkpoint
from am.model.device import resolve_device
from am.model.masks import DEFAULT_MIN_MARK_FRACTION, DEFAULT_MIN_MARK_PX
from am.model.memory import retain_freed_memory
from am.model.predict import Predictor, prepare_input
from am.model.refine import REFINE
from am.model.separate import DEFAULT_SEED_THRESHOLD
from am.model.storage import pack, unpack
from am.model.whole import predict_image_mask
from am.settings import OptionError
from am.train.data import CropDataset, Labelled
from am.train.init import load_init
from am.train.runfiles import (
    load_state,
    metrics_path,
    plain,
    read_record,
    record_path,
    save_state,
    state_path,
    write_csv,
    write_record,
)

log = logging.getLogger(__name__)

# Validation scores the model's own float32 answer (what inference precisions approximate).
VALIDATION_PRECISION = "fp32"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a run; stored in the checkpoint's training summary."""

    out: Path
    encoder: str = "tu-mobilenetv3_large_100"
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)
    refine_channels: int = 0
    epochs: int = 20
    steps_per_epoch: int = 100
    batch_size: int = 8
    crop: int = 256
    scale: tuple[float, float] = (0.7, 1.4)
    low_resolution: float = 0.0
    lr: float = 2e-3
    refine_lr: float | None = None
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    dice_weight: float = 1.0
    threshold: float = 0.5
    seed_threshold: float | None = DEFAULT_SEED_THRESHOLD
    min_mark_px: int = DEFAULT_MIN_MARK_PX
    min_mark_fraction: float = DEFAULT_MIN_MARK_FRACTION
    tile_size: int = 512
    pixel_scale: float = 1.0
    seed: int = 0
    device: str = ""
    threads: int = 0
    workers: int = 0
    half: bool = True
    int8: bool = False  # int8 convolution weights, the rest as with half (am.model.storage)
    resume: bool = False
    keep_state: bool = False
    max_minutes: float = 0.0
    init: Path | None = None
    init_partial: bool = False
    data_summary: dict[str, Any] = field(default_factory=dict)
    # False where the caller fixes encoder_depth (am.pseudolabel's small model): the warning about
    # untrained deeper stages would ask for a depth its user cannot choose.
    warn_unused: bool = True

    @property
    def weight_storage(self) -> str:
        """How the checkpoint stores its weights (:data:`am.model.storage.STORAGES`)."""
        return "int8" if self.int8 else "fp16" if self.half else "fp32"

    def meta(self, *, trained: bool, validation: dict[str, Any] | None = None) -> ModelMeta:
        skip = ("out", "data_summary", "resume", "keep_state", "device", "threads", "workers", "max_minutes", "init",
                "warn_unused")
        summary = {k: v for k, v in asdict(self).items() if k not in skip}
        if self.init is not None:
            summary["init"] = Path(self.init).name
        summary["scale"] = list(self.scale)
        summary["decoder_channels"] = list(self.decoder_channels)
        summary["data"] = self.data_summary
        return ModelMeta(
            encoder=self.encoder,
            encoder_depth=self.encoder_depth,
            decoder_channels=self.decoder_channels,
            refine_channels=self.refine_channels,
            in_channels=1,
            threshold=self.threshold,
            seed_threshold=self.seed_threshold,
            min_mark_px=self.min_mark_px,
            min_mark_fraction=self.min_mark_fraction,
            tile_size=self.tile_size,
            pixel_scale=self.pixel_scale,
            trained=trained,
            training=plain(summary),
            validation=plain(validation or {}),
        )


@dataclass
class TrainResult:
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    checkpoint: Path
    epochs_run: int = 0  # 0 when a resumed run found nothing left to do


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The arithmetic of the training forward pass: float32 (None) off CUDA; on CUDA bf16 where the GPU
    computes it in hardware (compute capability 8 and up), else fp16 with a gradient scaler.

    torch's plain ``is_bf16_supported()`` also says yes where bf16 is only emulated (T4, V100), which
    would train those GPUs far below their fp16 speed, or not at all where cuDNN refuses bf16.
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if _bf16_in_hardware(device) else torch.float16


def _bf16_in_hardware(device: torch.device) -> bool:
    if "including_emulation" in inspect.signature(torch.cuda.is_bf16_supported).parameters:
        with torch.cuda.device(device):  # the question is asked of the current device
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return torch.cuda.get_device_capability(device)[0] >= 8


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, *, dice_weight: float) -> torch.Tensor:
    """Weighted BCE plus soft Dice over the batch; pixels of weight 0 do not count."""
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum") / weight.sum().clamp(min=1)
    prob = torch.sigmoid(logits) * weight
    t = target * weight
    inter = (prob * t).sum()
    dice = 1 - (2 * inter + 1) / (prob.sum() + t.sum() + 1)
    return bce + dice_weight * dice


def validate(predictor: Predictor, items: list[Labelled], *, tile_size: int = 512) -> tuple[dict[str, float], list]:
    """Per-image scores at the checkpoint's threshold; the summary holds per-image means and pooled objects."""
    per_image = []
    for item in items:
        predicted = predict_image_mask(predictor, item.image, tile_size=tile_size)
        known = item.weight > 0
        per_image.append(score(item.mask * known, predicted * known))
    pooled = Scores.combine(per_image)
    summary = {
        "dice": float(np.mean([s.dice for s in per_image])),
        "iou": float(np.mean([s.iou for s in per_image])),
        "precision": pooled.precision,
        "recall": pooled.recall,
        "f1": pooled.f1,
        "images": len(items),
    }
    return summary, per_image


def train(
    config: TrainConfig,
    train_items: list[Labelled],
    valid_items: list[Labelled],
    *,
    progress: Callable[[Iterable, int, str], Iterable] | None = None,
) -> TrainResult:
    """Train and keep the best epoch at ``config.out``; ``progress(iterable, total, desc)`` may wrap loops.

    With ``config.resume`` the run continues from ``state_path(out)``, which must exist: a resume
    that quietly started afresh would overwrite the checkpoint it was meant to build on. A run
    already finished (its state gone, or as many epochs done as asked) is reported, not retrained.
    The state keeps a copy of the best epoch's checkpoint: an ``out`` that went missing or was
    replaced since is written again from it, so the run's best weights are never lost to a resume.
    """
    if not valid_items:
        raise InputError("training needs validation images (a valid split or --synthetic-valid > 0)")
    if config.crop % 32 or config.crop < 64:
        raise InputError(f"crop {config.crop} must be a multiple of 32 and at least 64")
    device = resolve_device(config.device)
    state = None
    if config.resume:
        if (finished := resume_without_training(config)) is not None:
            return finished
        state = load_state(state_path(config.out))
        config = _check_same_run(state.get("options"), config, f"resume state {state_path(config.out)}")
        _restore_best_checkpoint(config.out, int(state["best_epoch"]), _best_copy(state))
    meta = config.meta(trained=False)
    model = _model_for(config, meta, state, device)
    steps = _Steps.create(model, config, device)
    log.info("training %s (depth %d, %.2f M parameters, none frozen) on %s in %s", config.encoder,
             config.encoder_depth, sum(p.numel() for p in steps.params) / 1e6, device,
             "float32" if steps.amp_dtype is None else str(steps.amp_dtype).removeprefix("torch."))
    run = _Progress() if state is None else _Progress.restore(state, steps, config)
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)

    dataset = CropDataset(train_items, crop=config.crop, length=config.steps_per_epoch * config.batch_size,
                          seed=config.seed, scale=config.scale, low_resolution=config.low_resolution)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.workers,
                        drop_last=True, persistent_workers=False)
    started = time.monotonic()
    for epoch in range(run.start_epoch, config.epochs):
        t0 = time.monotonic()
        dataset.set_epoch(epoch)
        batches: Iterable = loader
        if progress is not None:
            batches = progress(loader, len(loader), f"epoch {epoch + 1}/{config.epochs}")
        losses, rates = _train_epoch(model, meta, batches, steps, config, device,
                                     check_unused=epoch == run.start_epoch)
        _refuse_diverged(model, losses, epoch)
        # Validated in float32 arithmetic (workers run fp16, bf16 or float32 by machine, within a few
        # pixels of it; the checkpoint records the precision) on the weights as the file stores them.
        predictor = Predictor(as_stored(model, config.weight_storage), replace(meta, trained=True),
                              device=str(device), batch_size=4, precision=VALIDATION_PRECISION)
        metrics, _ = validate(predictor, valid_items, tile_size=config.tile_size)
        # The mean rate this epoch's steps took (the first parameter group's), not the scheduler's rate
        # after the epoch, which is the next epoch's first.
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": float(np.mean(rates)),
               "seconds": time.monotonic() - t0, **metrics}
        _record_epoch(run, row, metrics, epoch, model, steps, config)
        if config.max_minutes and (time.monotonic() - started) / 60 > config.max_minutes and epoch + 1 < config.epochs:
            log.warning("stopping after epoch %d of %d: the %s limit is reached; rerun with --resume to "
                        "continue from %s", epoch + 1, config.epochs, _time_limit(config.max_minutes),
                        state_path(config.out))
            break
    # Whatever happened to ``out`` during the run (removed, replaced), it holds the best epoch on return.
    _restore_best_checkpoint(config.out, run.best_epoch, run.best_checkpoint)
    finished = len(run.history) == config.epochs
    if finished and not config.keep_state:
        state_path(config.out).unlink(missing_ok=True)  # tens of MB, only needed to resume an unfinished run
    return TrainResult(best_epoch=run.best_epoch, best_metrics=run.best_metrics, history=run.history,
                       checkpoint=config.out, epochs_run=len(run.history) - run.start_epoch)


@dataclass
class _Steps:
    """What takes a training step: the optimiser, its schedule, fp16's gradient scaler and the arithmetic."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    params: list[torch.nn.Parameter]
    amp_dtype: torch.dtype | None

    @staticmethod
    def create(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> _Steps:
        optimizer = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
        total_steps = config.epochs * config.steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config.warmup_steps, total_steps))
        amp_dtype = autocast_dtype(device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        return _Steps(optimizer, scheduler, scaler, list(model.parameters()), amp_dtype)


@dataclass
class _Progress:
    """Where a run stands between epochs: what a resume restores and every epoch saves."""

    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    # The bytes of the best epoch's checkpoint as written to ``out``; None for a run resumed from a
    # state written before states kept them, until it finds a better epoch.
    best_checkpoint: bytes | None = None

    @staticmethod
    def restore(state: dict[str, Any], steps: _Steps, config: TrainConfig) -> _Progress:
        """The saved run's place, with its optimiser, schedule and scaler put back as they were."""
        steps.optimizer.load_state_dict(state["optimizer"])
        steps.scheduler.load_state_dict(state["scheduler"])
        if steps.scaler.is_enabled() and state.get("scaler"):
            steps.scaler.load_state_dict(state["scaler"])  # else a resumed fp16 run backs off from 65536 again
        run = _Progress(history=[dict(h) for h in state["history"]], start_epoch=int(state["epoch"]) + 1,
                        best_score=float(state["best_score"]), best_epoch=int(state["best_epoch"]),
                        best_metrics=dict(state["best_metrics"]), best_checkpoint=_best_copy(state))
        log.info("resumed from %s after epoch %d of %d (best so far: epoch %d)", state_path(config.out),
                 run.start_epoch, config.epochs, run.best_epoch)
        _report_new_length(state, steps, config)
        return run


def _time_limit(minutes: float) -> str:
    """``--max-minutes`` as a message names it: "90-minute", "1.5-minute", under a minute "6-second"
    (a limit of 0.0001 min read as "the 0-minute limit")."""
    return f"{minutes:g}-minute" if minutes >= 1 else f"{minutes * 60:.3g}-second"


def _all_epochs_done(state: dict[str, Any], config: TrainConfig) -> TrainResult:
    """What a resume of a run with every asked epoch done returns, having trained nothing."""
    done = int(state["epoch"]) + 1
    _refuse_fewer_epochs(done, config, f"the run of {state_path(config.out)}")
    record = read_record(config.out)
    if record is not None and record.get("finished"):  # a finished run whose state --keep-state kept
        log.info("the run of %s has all %d epochs done: nothing to train (pass --epochs > %d to continue it)",
                 state_path(config.out), done, done)
    else:
        # A run stopped early (--max-minutes, Ctrl-C) and resumed with --epochs no more than it did is
        # finished at that length: its record says so and its state goes, as after a last epoch, so that
        # the files agree with "finished" (a later --resume treats it as any finished run).
        history = [dict(h) for h in state["history"]]
        write_record(config.out, epochs=config.epochs, options=config.meta(trained=False).training,
                     arithmetic=VALIDATION_PRECISION, best_epoch=int(state["best_epoch"]),
                     best_metrics=dict(state["best_metrics"]), history=history)
        if not config.keep_state:
            state_path(config.out).unlink(missing_ok=True)
        log.info("the run of %s stopped after %d epochs and is now asked for %d: it is finished at that length "
                 "(%s records it as finished%s)", config.out, done, config.epochs, record_path(config.out),
                 "" if config.keep_state else f"; {state_path(config.out)} deleted")
    return TrainResult(best_epoch=int(state["best_epoch"]), best_metrics=dict(state["best_metrics"]),
                       history=[dict(h) for h in state["history"]], checkpoint=config.out, epochs_run=0)


def _model_for(config: TrainConfig, meta: ModelMeta, state: dict[str, Any] | None,
               device: torch.device) -> torch.nn.Module:
    """The seeded model a run trains, its weights from the resume state, else from ``--init``, on ``device``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    if device.type == "cpu":
        retain_freed_memory()
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    model = build_model(meta)
    if state is not None:
        model.load_state_dict(state["model"])  # the weights of a resumed run come from its state, not --init
    elif config.init is not None:
        load_init(model, meta, Path(config.init), partial=config.init_partial)
    model = model.to(device).to(memory_format=torch.channels_last)
    frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    if frozen:
        raise InputError(f"{frozen} parameter tensors are frozen; every layer must train")
    return model


def _train_epoch(model: torch.nn.Module, meta: ModelMeta, batches: Iterable, steps: _Steps, config: TrainConfig,
                 device: torch.device, *, check_unused: bool) -> tuple[list[float], list[float]]:
    """One epoch's steps; each batch's loss and the learning rate its step took (the first parameter
    group's). ``check_unused`` looks, after the first backward pass, for parameters no gradient reaches."""
    model.train()
    losses, rates = [], []
    for image, mask, weight in batches:
        image, mask, weight = image.to(device), mask.to(device), weight.to(device)
        x = prepare_input(image, meta)
        with torch.autocast(device.type, dtype=steps.amp_dtype or torch.float32, enabled=steps.amp_dtype is not None):
            logits = model(x)
        loss = loss_fn(logits.float(), mask, weight, dice_weight=config.dice_weight)
        steps.optimizer.zero_grad(set_to_none=True)
        steps.scaler.scale(loss).backward()
        if check_unused and config.warn_unused:
            _warn_unused(model, config.encoder_depth)
            check_unused = False
        rates.append(float(steps.optimizer.param_groups[0]["lr"]))
        _optimizer_step(steps.optimizer, steps.scheduler, steps.scaler, steps.params)
        losses.append(float(loss.detach()))
    return losses, rates


class TrainingDiverged(InputError):
    """The weights are no longer finite: resuming the run would take the same steps to the same end."""


def _refuse_diverged(model: torch.nn.Module, losses: list[float], epoch: int) -> None:
    """:class:`TrainingDiverged` where the epoch left weights that are not finite: no later step can recover them.

    Checked before the epoch is validated or saved, so the resume state keeps the last good epoch.
    A step whose loss alone was not finite is left to pass: under fp16 autocast the gradient scaler
    skips such a step and lowers its scale, and the weights stay as they were.
    """
    broken = next((name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)
    if broken is None:
        return
    finite = [loss for loss in losses if np.isfinite(loss)]
    last = f"its last finite loss {finite[-1]:.4g}" if finite else "no step with a finite loss"
    raise TrainingDiverged(f"epoch {epoch + 1}: the training diverged ({broken} holds inf or NaN after the epoch, "
                     f"{last}); nothing of this epoch is kept: start again with a lower --lr (or more "
                     "--warmup-steps)")


def _record_epoch(run: _Progress, row: dict[str, float], metrics: dict[str, float], epoch: int,
                  model: torch.nn.Module, steps: _Steps, config: TrainConfig) -> None:
    """Log the epoch, keep its checkpoint if it is the best so far, and save what a resume needs.

    The metrics log, the resume state and the run's record are all written after every epoch, so a
    run stopped at any point can be resumed and shows how far it got.
    """
    run.history.append(row)
    write_csv(metrics_path(config.out), run.history)
    log.info("epoch %d: loss %.4f, valid dice %.4f iou %.4f object F1 %.4f (P %.3f R %.3f), %.0f s",
             epoch + 1, row["train_loss"], metrics["dice"], metrics["iou"], metrics["f1"], metrics["precision"],
             metrics["recall"], row["seconds"])
    current = metrics["dice"] + metrics["f1"]
    if current > run.best_score:
        run.best_score, run.best_epoch, run.best_metrics = current, epoch + 1, metrics
        done = config.meta(trained=True, validation={**metrics, "epoch": epoch + 1,
                                                     "arithmetic": VALIDATION_PRECISION})
        save_checkpoint(config.out, model, done, storage=config.weight_storage)
        run.best_checkpoint = Path(config.out).read_bytes()
    options = config.meta(trained=False).training
    best_copy = {} if run.best_checkpoint is None else {
        BEST_COPY: torch.frombuffer(bytearray(run.best_checkpoint), dtype=torch.uint8)}
    save_state(state_path(config.out), model, steps.optimizer, steps.scheduler, steps.scaler, epoch=epoch,
               best_score=run.best_score, best_epoch=run.best_epoch, best_metrics=run.best_metrics,
               history=run.history, options=options, **best_copy)
    write_record(config.out, epochs=config.epochs, options=options, arithmetic=VALIDATION_PRECISION,
                 best_epoch=run.best_epoch, best_metrics=run.best_metrics, history=run.history)


def resume_problem(out: Path) -> str | None:
    """Why a run writing ``out`` cannot be resumed, found before any data is read: neither a resume
    state nor a finished run is there, or ``out`` is not the run's best epoch and nothing can write
    it again."""
    path = state_path(out)
    record = read_record(out)
    best_epoch = _record_best_epoch(record)
    if path.is_file():
        if best_epoch is None or (problem := checkpoint_problem(out, best_epoch)) is None:
            return None  # train() checks it against the state itself
        try:
            state = load_state(path)
        except CheckpointError as exc:
            return str(exc)
        if _best_copy(state) is not None:
            return None  # train() writes it again from the state's copy
        return _no_copy(out, int(state["best_epoch"]), problem)
    if record is None or not record.get("finished"):
        return _nothing_to_resume(out)
    if best_epoch is not None and (problem := checkpoint_problem(out, best_epoch)) is not None:
        return _finished_run_lost(out, problem)
    return None


def resume_without_training(config: TrainConfig) -> TrainResult | None:
    """What :func:`train` returns, or raises, for a ``--resume`` with no epoch left to train, decided from
    the run's files alone; None where epochs remain (or ``config`` does not resume).

    So that such a resume answers in seconds, not after minutes of reading and rendering data it
    would not use (``make model`` reruns a finished run of 1500 synthetic images this way).
    """
    if not config.resume:
        return None
    path = state_path(config.out)
    if not path.is_file():
        return _finished_run(config)
    state = load_state(path)
    if int(state["epoch"]) + 1 < config.epochs:
        return None
    config = _check_same_run(state.get("options"), config, f"resume state {path}")
    _restore_best_checkpoint(config.out, int(state["best_epoch"]), _best_copy(state))
    return _all_epochs_done(state, config)


def resume_options_problem(config: TrainConfig) -> str | None:
    """Why ``config`` cannot resume the run whose state is beside ``config.out`` (other options, a state
    that cannot be read), found from the options alone, before minutes of reading and rendering data;
    None if it can, or if there is no state (:func:`resume_problem` and :func:`train` say what then)."""
    path = state_path(config.out)
    if not path.is_file():
        return None
    try:
        state = load_state(path)
        if state.get("options") is not None:  # else train() warns that they cannot be checked
            _check_same_run(state["options"], config, f"resume state {path}")
    except CheckpointError as exc:
        return str(exc)
    return None


# How a refused --resume starts afresh instead: a new run refuses an --out holding a run's files.
START_AFRESH = "drop --resume and give another --out to start afresh"

# The resume state's copy of the best epoch's checkpoint file (a uint8 tensor of its bytes).
BEST_COPY = "best_checkpoint"


def _best_copy(state: dict[str, Any]) -> bytes | None:
    copy = state.get(BEST_COPY)
    return copy.numpy().tobytes() if isinstance(copy, torch.Tensor) else None


def _record_best_epoch(record: dict[str, Any] | None) -> int | None:
    epoch = None if record is None else record.get("best_epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def checkpoint_problem(out: Path, best_epoch: int, copy: bytes | None = None) -> str | None:
    """Why ``out`` is not the checkpoint of its run's best epoch ``best_epoch``, or None where it is.

    With ``copy`` (the bytes the run wrote) ``out`` must hold exactly them; without, its recorded
    validation epoch must be ``best_epoch``.
    """
    out = Path(out)
    if not out.is_file():
        return f"{out} is missing"
    if copy is not None and out.read_bytes() == copy:
        return None
    try:
        meta, _ = load_checkpoint(out)
    except CheckpointError as exc:
        return f"{out} cannot be read ({exc})"
    epoch = meta.validation.get("epoch")
    if epoch != best_epoch:
        held = "an untrained model" if epoch is None else f"epoch {epoch}"
        return f"{out} holds {held}, not this run's best epoch {best_epoch}"
    return None if copy is None else f"{out} is not the checkpoint this run wrote for its best epoch {best_epoch}"


def _restore_best_checkpoint(out: Path, best_epoch: int, copy: bytes | None) -> None:
    """Make ``out`` the checkpoint of the run's best epoch again, from ``copy`` where it is not; an error
    (nothing written) where there is no copy to write it from."""
    problem = checkpoint_problem(out, best_epoch, copy)
    if problem is None:
        return
    if copy is None:
        raise CheckpointError(_no_copy(out, best_epoch, problem))
    write_atomic(Path(out), copy)
    log.warning("%s: wrote it again from the run's copy of its best epoch %d", problem, best_epoch)


def _no_copy(out: Path, best_epoch: int, problem: str) -> str:
    return (f"--resume: {problem}, and the resume state {state_path(out)} (written by an earlier version of "
            f"am.train) keeps no copy of that epoch to write it again from: put the checkpoint of epoch {best_epoch} "
            f"back at {out} and rerun with --resume, or {START_AFRESH}")


def _finished_run_lost(out: Path, problem: str) -> str:
    return (f"--resume: {out} is the checkpoint of a finished run, but {problem}; its resume state was deleted "
            f"when the run finished (--keep-state keeps it), so the best epoch cannot be written again: put the "
            f"checkpoint back at {out}, or {START_AFRESH}")


def _nothing_to_resume(out: Path) -> str:
    return (f"--resume: there is no resume state {state_path(out)}, so there is nothing to continue (no epoch of "
            f"a run writing {out} has finished, or the state was deleted); {START_AFRESH}")


def _finished_run(config: TrainConfig) -> TrainResult:
    """What a resume finds without a resume state: a finished run with nothing left to do, or an error."""
    path = state_path(config.out)
    record = read_record(config.out)
    if record is None or not record.get("finished"):
        raise CheckpointError(_nothing_to_resume(config.out))
    _check_same_run(record.get("options"), config, f"the finished run {config.out}")
    best_epoch = _record_best_epoch(record)
    if best_epoch is not None and (problem := checkpoint_problem(config.out, best_epoch)) is not None:
        raise CheckpointError(_finished_run_lost(config.out, problem))
    done = len(record["history"])
    if config.epochs > done:
        raise CheckpointError(f"--resume: {config.out} is a finished run of {done} epochs, and its resume state "
                              f"{path} was deleted when it finished (--keep-state keeps it); to train further, "
                              f"start a new run from its weights with --init {config.out} and another --out, or "
                              f"{START_AFRESH}")
    _refuse_fewer_epochs(done, config, f"the finished run {config.out}")
    log.info("%s is a finished run of %d epochs: nothing to resume or train", config.out, done)
    return TrainResult(best_epoch=int(record["best_epoch"]), best_metrics=dict(record["best"]),
                       history=[dict(h) for h in record["history"]], checkpoint=config.out, epochs_run=0)


def _refuse_fewer_epochs(done: int, config: TrainConfig, what: str) -> None:
    if config.epochs < done:
        raise OptionError(f"--epochs {config.epochs} is fewer than the {done} epochs {what} has done, and a run "
                          f"cannot be shortened: pass --epochs {done} (nothing to do) or more")


def _optimizer_step(optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                    params: list[torch.nn.Parameter]) -> bool:
    """Clip and apply the gradients; whether the step was taken.

    Under fp16 the scaler skips a step whose gradients overflowed (and lowers its scale): the
    warm-up and cosine schedule then stay where they are, rather than being spent without an update.
    """
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, 5.0)
    scale_before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    if scale_before is not None and scaler.get_scale() < scale_before:
        return False
    scheduler.step()
    return True


def _param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """One learning rate for all, or ``refine_lr`` for the refinement branch: a branch grown on a
    trained U-Net starts from zero and, at a rate meant for nudging trained weights, barely moves."""
    if config.refine_lr is None:
        return [{"params": list(model.parameters())}]
    named = list(model.named_parameters())
    rest = [p for name, p in named if not name.startswith(REFINE)]
    branch = [p for name, p in named if name.startswith(REFINE)]
    return [{"params": rest}, {"params": branch, "lr": config.refine_lr}] if branch else [{"params": rest}]


def as_stored(model: torch.nn.Module, storage: str) -> torch.nn.Module:
    """``model`` with the weights a checkpoint in ``storage`` gives back: the figures a checkpoint
    records must be those of the file, and int8 moves them measurably (0.2699 against 0.2726 on a
    short run). fp32 storage changes nothing, so the model itself is returned."""
    if storage == "fp32":
        return model
    stored = copy.deepcopy(model)
    stored.load_state_dict(unpack(*pack(model.state_dict(), storage), name=f"{storage} weights"))
    return stored


# Rates closer than this (relative) are the same plan: a difference under 1 % is not what the metrics
# log's loss responds to, and two rates 1 % apart never print alike at 3 significant digits.
SCHEDULE_REL_TOL = 0.01


def _report_new_length(state: dict[str, Any], steps: _Steps, config: TrainConfig) -> None:
    """A run resumed with another --epochs has its cosine schedule fitted to the new length, so its
    learning rate leaves the old plan (up for a longer run, down for a shorter one); said once, with
    the first step where the two plans part and where they are furthest apart, so the metrics log's
    step in the loss is not a mystery. Where the plans agree over every step left (the run ends
    within warm-up, which does not depend on the length), nothing changes and there is no warning.
    The old length stays in the best checkpoint taken before."""
    before = (state.get("options") or {}).get("epochs")
    if not isinstance(before, int) or before == config.epochs:
        return
    old = _schedule(config.warmup_steps, before * config.steps_per_epoch)
    new = _schedule(config.warmup_steps, config.epochs * config.steps_per_epoch)
    total = config.epochs * config.steps_per_epoch
    # The next step takes the rate the restored optimiser holds (the old plan's); the new plan sets
    # the rate of each step after it.
    parting = _schedules_part(old, new, range(steps.scheduler.last_epoch + 1, total))
    kept = (f"the best checkpoint so far (epoch {int(state['best_epoch'])}) keeps epochs {before} in its "
            "metadata until a better epoch replaces it")
    if parting is None:
        log.info("the run was started for %d epochs and now runs for %d: its learning rate over the %d steps "
                 "left is the same under either length; %s", before, config.epochs,
                 max(0, total - steps.scheduler.last_epoch), kept)
        return
    first, widest = parting
    most = "" if widest == first else (f", and differs most at step {widest + 1} ({config.lr * new(widest):.3g} "
                                       f"instead of {config.lr * old(widest):.3g})")
    log.warning("the run was started for %d epochs and now runs for %d: its learning-rate schedule is %s to the "
                "new length, so the rate leaves the old plan at step %d of %d (%.3g instead of %.3g)%s; %s",
                before, config.epochs,
                "stretched" if config.epochs > before else "compressed", first + 1, total,
                config.lr * new(first), config.lr * old(first), most, kept)


def _schedules_part(old: Callable[[int], float], new: Callable[[int], float],
                    steps: range) -> tuple[int, int] | None:
    """The first of ``steps`` (0-based) where ``new`` differs from ``old`` by more than SCHEDULE_REL_TOL,
    and the one where they differ most (relatively); None where they agree on every step."""
    first = widest = None
    widest_gap = 0.0
    for step in steps:
        was, now = old(step), new(step)
        gap = abs(now - was) / max(abs(now), abs(was), 1e-12)
        if gap <= SCHEDULE_REL_TOL:
            continue
        if first is None:
            first = step
        if gap > widest_gap:
            widest, widest_gap = step, gap
    return None if first is None or widest is None else (first, widest)


def _warn_unused(model: torch.nn.Module, depth: int) -> None:
    """Parameters without a gradient belong to encoder stages this depth never runs: they are built
    and saved with their initial values, but never trained. Called once per run."""
    unused = [(name, p.numel()) for name, p in model.named_parameters() if p.grad is None]
    if unused:
        log.warning("%d parameter tensors (%.2f M values) get no gradient: encoder stages beyond depth %d are "
                    "built and saved but never run or trained (e.g. %s); use encoder depth 5 to train every layer",
                    len(unused), sum(n for _, n in unused) / 1e6, depth, unused[0][0])


def _schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _check_same_run(saved: dict[str, Any] | None, config: TrainConfig, what: str) -> TrainConfig:
    """Refuse to resume a run with other options but its length: the learning rate and schedule come
    back from the saved state whatever the command says, other data or another architecture would
    make a run no command describes, and the checkpoint would record options it never used.

    ``--init`` may be left out (the weights come from the state, so its file need not exist any
    more): the returned config then names the checkpoint the run started from, as its record should.
    An option added since the state was saved counts as having had its default then.
    """
    if saved is None:  # written before resume states recorded their options
        log.warning("%s does not record its run's options; they cannot be checked", what)
        return config
    if config.init is None and "init" in saved:
        config = replace(config, init=Path(saved["init"]), init_partial=bool(saved.get("init_partial")))
    asked = _comparable(plain(config.meta(trained=False).training))
    defaults = plain(TrainConfig(out=config.out).meta(trained=False).training)
    saved = _comparable(saved)
    # More epochs is how a finished or stopped run is taken further; everything else must match.
    differ = [(k, saved.get(k, defaults.get(k)), asked.get(k)) for k in sorted(set(saved) | set(asked))
              if k != "epochs" and saved.get(k, defaults.get(k)) != asked.get(k)]
    if differ:
        changes = "; ".join(_change(k, before, after) for k, before, after in differ)
        raise CheckpointError(f"{what} belongs to a run with other options ({changes}): resume it with the "
                              f"options it was started with, or {START_AFRESH}")
    return config


def _comparable(options: dict[str, Any]) -> dict[str, Any]:
    """Run options with their --data folders resolved, so that ``tiles`` and ``/abs/tiles`` are one folder
    (a relative folder of an older record is taken from the current directory)."""
    data = options.get("data")
    if not (isinstance(data, dict) and isinstance(data.get("folders"), list)):
        return options
    folders = [str(Path(f).resolve()) if isinstance(f, str) else f for f in data["folders"]]
    return {**options, "data": {**data, "folders": folders}}


def _change(key: str, before: Any, after: Any) -> str:
    """One differing option, short: only the entries of a dict option (the data summary) that differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        return "; ".join(_change(f"{key}.{k}", before.get(k), after.get(k))
                         for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k))
    return f"{key} {_short(before)} -> {_short(after)}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "as_stored", "autocast_dtype", "loss_fn",
           "resume_options_problem", "resume_problem", "resume_without_training", "train", "validate"]
