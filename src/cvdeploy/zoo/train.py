"""Training of the zoo's detector (and, re-exported, its classifier) on small datasets.

The detector loop: task-aligned assignment, CIoU + DFL + BCE losses, mosaic/affine/flip/HSV
augmentation, an EMA of the weights, AdamW with warm-up and a cosine schedule that follows
the time budget when one is given (progress = elapsed / budget). Checkpoints
(``last.pt``, ``best.pt``) hold the EMA weights in fp16 plus what is needed to rebuild the
model (see :func:`cvdeploy.zoo.registry.load_zoo_model`).

Measured on the 2-core AMD EPYC (AVX2, no AVX-512/AMX) this was developed on: bf16 autocast
made a training step 6-9x *slower* (no native bf16 there), so ``amp`` defaults to off;
channels-last was about as fast as contiguous memory (kept on: it never lost). Batches are
built in the main process: a DataLoader worker only competes for the same two cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvdeploy.errors import DatasetError, UsageError
from cvdeploy.zoo.classify_train import train_classifier
from cvdeploy.zoo.loss import DetectionLoss, LossGains
from cvdeploy.zoo.models import Detector, build_model, model_task
from cvdeploy.zoo.trainset import AugmentConfig, YoloTrainSet, read_data_yaml
from cvdeploy.zoo.trainutil import (
    ModelEMA,
    Schedule,
    Stopwatch,
    TrainDisplay,
    checkpoint_state,
    flush_denormals,
    make_optimizer,
    save_checkpoint,
    thread_limit,
)

__all__ = ["TrainResult", "train_classifier", "train_detector"]

PREPROCESS = {"color": "RGB", "scale": 1 / 255, "resize": "letterbox", "pad_value": 114}
"""How the zoo models expect their input (recorded in every checkpoint)."""

SHORT_BUDGET_GAINS = LossGains(box=7.5, cls=1.5, dfl=1.5)
"""YOLOv8's weights with a heavier class term (1.5 instead of 0.5): +0.036 mAP50-95 after
the same 750 steps on the synthetic set (0.295 vs 0.259 at 128 px)."""

SHORT_BUDGET_AUGMENT = AugmentConfig(mosaic=0.5, scale=0.3)
"""Lighter than YOLOv8's defaults (mosaic 1.0, scale 0.5): with a budget of a few thousand
steps the model learns faster from less distorted images (measured on the synthetic set,
together with batch 8 instead of 16: 0.17 vs 0.13 mAP50-95 after the same 7 minutes)."""

WARM_SCALE = 0.75
"""Progressive resizing: the training size is this share of ``imgsz`` (a multiple of 32)
until ``WARM_UNTIL`` of the schedule (a 192 px step costs about 60% of a 256 px one)."""
WARM_UNTIL = 0.6
CLOSE_MOSAIC = 0.85
"""Training progress after which mosaic is switched off."""


@dataclass(frozen=True)
class TrainResult:
    """Outcome of a training run.

    Attributes:
        model: Architecture name.
        best: Path of ``best.pt`` (lowest validation loss, or the last one without val data).
        last: Path of ``last.pt``.
        metrics: Metrics of the final weights (from ``evaluate``, plus ``val_loss``).
        elapsed_s: Wall-clock seconds of the whole call.
        epochs: Epochs run (the last one may be partial).
        iterations: Optimizer steps.
        history: Per-epoch records (epoch, iterations, train loss parts, val loss, elapsed).
    """

    model: str
    best: Path
    last: Path
    metrics: dict[str, float]
    elapsed_s: float
    epochs: int
    iterations: int
    history: list[dict[str, float]] = field(default_factory=list)


def train_detector(
    *,
    model: str = "detector-n",
    data: Path,
    out_dir: Path,
    epochs: int | None = None,
    time_budget_s: float | None = None,
    imgsz: int = 256,
    batch: int = 8,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    eval_every: int = 0,
    lr: float = 0.005,
    warmup: float = 0.03,
    static_warmup: float = 0.2,
    weight_decay: float = 0.0005,
    augment: AugmentConfig | None = None,
    close_mosaic: float = CLOSE_MOSAIC,
    ema_decay: float = 0.998,
    amp: bool = False,
    channels_last: bool = True,
    warm_scale: float | None = WARM_SCALE,
    warm_until: float = WARM_UNTIL,
    gains: LossGains | None = None,
) -> TrainResult:
    """Train a zoo detector on a YOLO-format dataset.

    Args:
        model: Detector architecture (``detector-n`` or ``detector-s``).
        data: ``data.yaml`` (or its folder) of an Ultralytics-YOLO dataset.
        out_dir: Where ``last.pt`` and ``best.pt`` are written.
        epochs: Number of epochs (with ``time_budget_s``, whichever ends first).
        time_budget_s: Training time budget; the LR schedule follows elapsed / budget.
        imgsz: Square training size (divisible by 32).
        batch: Batch size.
        seed: Seed of initialisation, sampling and augmentation.
        threads: torch intra-op threads during training (unchanged when None).
        progress: Show a rich progress bar.
        evaluate: Called at the end with the final EMA model (eval mode); its metrics are
            stored in the checkpoints and returned.
        eval_every: Also call ``evaluate`` after every ``eval_every`` epochs (0: only at the
            end) and add its metrics to that epoch's history record.
        lr: Peak AdamW learning rate.
        warmup: Fraction of the schedule spent in linear learning-rate warm-up.
        static_warmup: Fraction of the schedule during which labels are assigned with fixed
            anchor boxes instead of the (still random) predictions; it makes the start of
            training much more stable and allows a higher learning rate.
        weight_decay: AdamW weight decay (conv weights only).
        augment: Augmentation strengths (``SHORT_BUDGET_AUGMENT`` when None).
        close_mosaic: Progress after which mosaic is switched off.
        ema_decay: Final decay of the weight EMA.
        amp: bf16 autocast (slower on CPUs without native bf16).
        channels_last: Channels-last memory format.
        warm_scale: Progressive resizing: train at ``imgsz * warm_scale`` (rounded to a
            multiple of 32) until ``warm_until`` of the schedule, then at ``imgsz`` (``None``:
            always ``imgsz``). A 192 px step costs about 60% of a 256 px one, and what is
            learnt carries over.
        warm_until: Fraction of the schedule trained at the smaller size.
        gains: Loss weights (``SHORT_BUDGET_GAINS`` when None).

    Returns:
        A :class:`TrainResult`.

    Raises:
        UsageError: On bad options.
        DatasetError: If the dataset cannot be read.
    """
    if model_task(model) != "detect":
        raise UsageError(
            f"{model!r} is not a detector", hint="use train_classifier for classifiers"
        )
    if epochs is None and time_budget_s is None:
        raise UsageError("give epochs and/or time_budget_s")
    if (epochs is not None and epochs < 1) or (time_budget_s is not None and time_budget_s <= 0):
        raise UsageError("epochs and time_budget_s must be positive")
    if imgsz % 32 or batch < 1:
        raise UsageError(f"imgsz must be divisible by 32 and batch >= 1 (got {imgsz}, {batch})")
    if warm_scale is not None and not 0 < warm_scale <= 1:
        raise UsageError(f"warm_scale must be in (0, 1] (got {warm_scale})")
    warm_imgsz = None if warm_scale is None else max(32, round(imgsz * warm_scale / 32) * 32)
    clock = Stopwatch()
    aug = augment or SHORT_BUDGET_AUGMENT
    train_args: dict[str, Any] = {
        "model": model, "data": str(data), "epochs": epochs, "time_budget_s": time_budget_s,
        "imgsz": imgsz, "batch": batch, "seed": seed, "lr": lr, "warmup": warmup,
        "static_warmup": static_warmup,
        "weight_decay": weight_decay,
        "augment": asdict(aug), "close_mosaic": close_mosaic, "ema_decay": ema_decay, "amp": amp,
        "channels_last": channels_last, "warm_scale": warm_scale, "warm_until": warm_until,
        "gains": asdict(gains or SHORT_BUDGET_GAINS),
    }  # fmt: skip
    splits, names = read_data_yaml(Path(data))
    if "train" not in splits:
        raise DatasetError(f"{data} has no train split")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with thread_limit(threads), flush_denormals(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trainset = YoloTrainSet(splits["train"], names=names, imgsz=imgsz)
        valset = YoloTrainSet(splits["val"], names=names, imgsz=imgsz) if "val" in splits else None
        warmset = (
            trainset.resized(warm_imgsz) if warm_imgsz is not None and warm_imgsz != imgsz else None
        )
        net = build_model(model, num_classes=len(names))
        assert isinstance(net, Detector)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        net = net.to(memory_format=memory_format).train()  # type: ignore[call-overload]
        criterion = DetectionLoss(
            num_classes=len(names),
            reg_max=net.reg_max,
            strides=net.strides,
            gains=gains or SHORT_BUDGET_GAINS,
        )
        ema = ModelEMA(net, decay=ema_decay)
        opt = make_optimizer(net, lr=lr, weight_decay=weight_decay)
        n_batches = max(len(trainset) // batch, 1)
        sched = Schedule(
            total_iters=epochs * n_batches if epochs else None,
            budget_s=time_budget_s,
            warmup=warmup,
        )
        rng = np.random.default_rng(seed)

        def payload(metrics: dict[str, float], epoch: int, it: int) -> dict[str, Any]:
            return {
                "model": model, "task": "detect", "num_classes": len(names), "names": names,
                "imgsz": imgsz, "state_dict": checkpoint_state(ema.ema), "train_args": train_args,
                "metrics": metrics, "elapsed_s": round(clock(), 2), "epoch": epoch,
                "iterations": it, "preprocess": PREPROCESS, "torch_version": str(torch.__version__),
            }  # fmt: skip

        history: list[dict[str, float]] = []
        best_loss = math.inf
        it, epoch = 0, 0
        with TrainDisplay(enabled=progress, title=model) as display:
            while sched.progress(it, clock()) < 1.0:
                epoch += 1
                parts_sum, n_parts = torch.zeros(3), 0
                order = rng.permutation(len(trainset))
                for b in range(n_batches):
                    p = sched.progress(it, clock())
                    if p >= 1.0:
                        break
                    for g in opt.param_groups:
                        g["lr"] = lr * sched.lr_factor(p)
                    idx = order[b * batch : (b + 1) * batch].tolist()
                    source = warmset if warmset is not None and p < warm_until else trainset
                    x, targets = source.batch(idx, rng=rng, aug=aug, mosaic=p < close_mosaic)
                    x = x.contiguous(memory_format=memory_format)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                        feats = net.forward_raw(x)
                    loss, parts = criterion(feats, targets, static_assign=p < static_warmup)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=10.0)
                    opt.step()
                    ema.update(net)
                    it += 1
                    parts_sum += parts
                    n_parts += 1
                    avg = parts_sum / n_parts
                    display.update(
                        progress=sched.progress(it, clock()),
                        description=f"epoch {epoch} it {b + 1}/{n_batches}",
                        info=f"box {avg[0]:.3f} cls {avg[1]:.3f} dfl {avg[2]:.3f}",
                    )
                if n_parts == 0:  # the budget ran out before this epoch started
                    epoch -= 1
                    break
                record = {"epoch": float(epoch), "iterations": float(it), "elapsed_s": clock()}
                record.update(
                    zip(("box", "cls", "dfl"), (parts_sum / n_parts).tolist(), strict=True)
                )
                if valset is not None:
                    record["val_loss"] = _val_loss(ema.ema, valset, criterion, memory_format)
                if evaluate is not None and eval_every > 0 and epoch % eval_every == 0:
                    interim = _rounded_copy(ema.ema, model=model, num_classes=len(names))
                    record.update(evaluate(interim))
                    net.train()
                history.append(record)
                ckpt = payload({"val_loss": record["val_loss"]} if valset else {}, epoch, it)
                save_checkpoint(out_dir / "last.pt", ckpt)
                if valset is None or record["val_loss"] < best_loss:
                    best_loss = record.get("val_loss", best_loss)
                    save_checkpoint(out_dir / "best.pt", ckpt)
        metrics: dict[str, float] = (
            {"val_loss": history[-1]["val_loss"]} if valset and history else {}
        )
        if evaluate is not None:
            final = _rounded_copy(ema.ema, model=model, num_classes=len(names))
            metrics.update(evaluate(final))
        final_ckpt = payload(metrics, epoch, it)
        save_checkpoint(out_dir / "last.pt", final_ckpt)
        if valset is None or (history and history[-1]["val_loss"] <= best_loss):
            save_checkpoint(out_dir / "best.pt", final_ckpt)
    return TrainResult(
        model=model,
        best=out_dir / "best.pt",
        last=out_dir / "last.pt",
        metrics=metrics,
        elapsed_s=clock(),
        epochs=epoch,
        iterations=it,
        history=history,
    )


def _rounded_copy(ema: torch.nn.Module, *, model: str, num_classes: int) -> torch.nn.Module:
    """A fresh fp32 model holding the EMA weights as stored (rounded through fp16), in eval."""
    fresh = build_model(model, num_classes=num_classes)
    state = {k: v.float() if v.is_floating_point() else v for k, v in checkpoint_state(ema).items()}
    fresh.load_state_dict(state)
    return fresh.eval()


@torch.no_grad()
def _val_loss(
    model: torch.nn.Module,
    valset: YoloTrainSet,
    criterion: DetectionLoss,
    memory_format: torch.memory_format,
) -> float:
    """Mean loss of the (EMA) model on the validation split, in eval mode."""
    assert isinstance(model, Detector)
    model.eval()
    total, n = 0.0, 0
    for start in range(0, len(valset), 32):
        idx = list(range(start, min(start + 32, len(valset))))
        x, targets = valset.batch(idx)
        loss, _ = criterion(model.forward_raw(x.contiguous(memory_format=memory_format)), targets)
        total += float(loss) * len(idx)
        n += len(idx)
    return total / max(n, 1)
