"""The training loop shared by pruning recovery, distillation and quantization-aware training.

The student learns from a teacher's outputs on the user's images (labels when given): AdamW
with warm-up and a cosine schedule that follows the time budget (progress = the larger of
elapsed / budget and step / steps), an EMA of the weights, a progress bar, a checkpoint
every ``checkpoint_every`` steps and on Ctrl-C, and resume from that checkpoint (the time
already spent counts against the budget). Denormal floats are flushed during the loop (see
:func:`cvdeploy.zoo.trainutil.flush_denormals`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cvdeploy.compress.data import TrainImages
from cvdeploy.compress.loss import DistillLoss, student_output
from cvdeploy.compress.teacher import Teacher
from cvdeploy.errors import CvdeployError, Interrupted, UsageError
from cvdeploy.zoo.trainutil import (
    ModelEMA,
    Schedule,
    Stopwatch,
    TrainDisplay,
    flush_denormals,
    make_optimizer,
    thread_limit,
)

__all__ = ["LoopOptions", "LoopResult", "TrainingInterrupted", "distill_loop", "recalibrate_bn"]


TrainingInterrupted = Interrupted
"""Training was interrupted (Ctrl-C); its state was saved for ``--resume``."""


@dataclass(frozen=True)
class LoopOptions:
    """How long and how the student learns.

    Attributes:
        budget_s: Wall-clock budget of this loop (``None``: ``max_steps`` only); a step
            that would end past it (as long as the last one took) is not started.
        max_steps: Optimizer steps (``None``: until the budget).
        batch: Images per step.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (conv/linear weights).
        warmup: Fraction of the schedule in linear warm-up.
        ema_decay: Final decay of the weight EMA (0: no EMA).
        seed: Seed of sampling and augmentation.
        threads: torch threads during the loop (unchanged when None).
        checkpoint_every: Save the state every this many steps (and on Ctrl-C).
        train_mode: Train-mode forward (BatchNorm statistics update); ``False`` keeps the
            student in eval mode (frozen statistics), for students that are not zoo models.
        progress: Show a progress bar.
        title: Text in front of the bar.
        channels_last: Train the student in the channels-last memory format (as the zoo's
            training does: oneDNN's convolutions are faster so on the CPU); the student is
            returned in the default format.
    """

    budget_s: float | None = None
    max_steps: int | None = None
    batch: int = 8
    lr: float = 0.001
    weight_decay: float = 0.0005
    warmup: float = 0.05
    ema_decay: float = 0.998
    seed: int = 0
    threads: int | None = None
    checkpoint_every: int = 50
    train_mode: bool = True
    progress: bool = True
    title: str = "distill"
    channels_last: bool = False


@dataclass
class LoopResult:
    """What a loop did.

    Attributes:
        steps: Optimizer steps taken (including those before a resume).
        elapsed_s: Training seconds (including those before a resume).
        losses: Total loss of every step.
        parts: Mean of each loss part over the last 20 steps.
        resumed_from: Step the loop resumed from (0: a fresh start).
    """

    steps: int
    elapsed_s: float
    losses: list[float] = field(default_factory=list)
    parts: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0

    def mean_loss(self, first: bool) -> float:
        """Mean total loss of the first (or last) tenth of the steps (at least 5 steps)."""
        if not self.losses:
            return math.nan
        k = max(5, len(self.losses) // 10)
        part = self.losses[:k] if first else self.losses[-k:]
        return float(np.mean(part))


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, images: TrainImages, *, batches: int = 20, batch: int = 16, seed: int = 0
) -> None:
    """Re-estimate BatchNorm running statistics on the images (after pruning changed what
    every layer sees); the weights are not changed."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.eval()
    for m in bns:
        m.train()
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        idx = rng.integers(0, images.n, min(batch, images.n)).tolist()
        x, _ = images.batch(idx, rng=rng, augment=False)
        fwd = getattr(model, "forward_raw", None)
        fwd(x) if fwd is not None else model(x)
    for m, (mom, tr) in zip(bns, saved, strict=True):
        m.momentum = mom
        m.train(tr)
    model.eval()


def distill_loop(
    student: nn.Module,
    teacher: Teacher,
    images: TrainImages,
    loss_fn: DistillLoss,
    *,
    options: LoopOptions,
    save: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> LoopResult:
    """Train ``student`` (in place) against ``teacher`` on ``images``.

    Args:
        student: The model to train; on return it holds the EMA weights, in eval mode.
        teacher: Gives the targets of each batch.
        images: Training images.
        loss_fn: The loss.
        options: Budget, optimizer and checkpoint options.
        save: Called with the loop's state (a dict of tensors and plain values) every
            ``checkpoint_every`` steps, at the end, and on Ctrl-C.
        resume: A state ``save`` was called with: training continues from it.
        on_step: Called after every step with ``(step, loss)`` (tests interrupt here).

    Returns:
        A :class:`LoopResult`.

    Raises:
        TrainingInterrupted: On Ctrl-C, after the state was saved.
        UsageError: Neither a budget nor a number of steps.
    """
    if options.budget_s is None and options.max_steps is None:
        raise UsageError("give a time budget (--minutes) or a number of steps")
    opt_params = [p for p in student.parameters() if p.requires_grad]
    if not opt_params:
        raise UsageError("the student has no trainable parameters")
    clock = Stopwatch()
    sched = Schedule(
        total_iters=options.max_steps, budget_s=options.budget_s, warmup=options.warmup
    )
    fmt = torch.channels_last if options.channels_last else torch.contiguous_format
    student.to(memory_format=fmt)  # type: ignore[call-overload]
    opt = make_optimizer(student, lr=options.lr, weight_decay=options.weight_decay)
    ema = ModelEMA(student, decay=options.ema_decay) if options.ema_decay > 0 else None
    rng = np.random.default_rng(options.seed)
    step, spent, losses = 0, 0.0, []
    parts_hist: list[dict[str, float]] = []
    if resume is not None:
        student.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        if ema is not None and resume.get("ema") is not None:
            ema.ema.load_state_dict(resume["ema"])
            ema.updates = int(resume.get("ema_updates", 0))
        rng.bit_generator.state = resume["rng"]
        step, spent = int(resume["step"]), float(resume["elapsed_s"])
        losses = list(resume.get("losses", []))
    start_step = step

    def elapsed() -> float:
        return spent + clock()

    def state() -> dict[str, Any]:
        return {
            "model": copy.deepcopy(student.state_dict()),
            "optimizer": copy.deepcopy(opt.state_dict()),
            "ema": None if ema is None else copy.deepcopy(ema.ema.state_dict()),
            "ema_updates": 0 if ema is None else ema.updates,
            "rng": rng.bit_generator.state,
            "step": step,
            "elapsed_s": elapsed(),
            "losses": list(losses),
        }

    with (
        thread_limit(options.threads),
        flush_denormals(),
        TrainDisplay(enabled=options.progress, title=options.title) as display,
    ):
        try:
            last_step_s = 0.0  # a step that would end past the time budget is not started
            while sched.progress(step, elapsed() + last_step_s) < 1.0:
                t_step = clock()
                p = sched.progress(step, elapsed())
                for g in opt.param_groups:
                    g["lr"] = options.lr * sched.lr_factor(p)
                idx = rng.integers(0, images.n, min(options.batch, images.n)).tolist()
                x, labels = images.batch(idx, rng=rng, progress=p)
                targets = teacher.targets(x)
                student.train(options.train_mode)
                out = student_output(student, x.contiguous(memory_format=fmt), task=images.task)
                loss, parts = loss_fn(out, targets, labels, progress=p)
                if not torch.isfinite(loss):
                    raise CvdeployError(
                        f"the loss became {float(loss)} at step {step}",
                        hint="lower the learning rate (--lr)",
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(opt_params, max_norm=10.0)
                opt.step()
                if ema is not None:
                    ema.update(student)
                step += 1
                losses.append(float(loss.detach()))
                parts_hist.append(parts)
                info = " ".join(f"{k} {v:.3f}" for k, v in parts.items())
                display.update(
                    progress=sched.progress(step, elapsed()),
                    description=f"step {step}",
                    info=info,
                )
                if save is not None and step % options.checkpoint_every == 0:
                    save(state())
                if on_step is not None:
                    on_step(step, losses[-1])
                last_step_s = clock() - t_step
        except KeyboardInterrupt:
            if save is not None:
                save(state())
            raise TrainingInterrupted(
                f"interrupted at step {step}: the training state was saved",
                hint="run the same command again with --resume to continue",
            ) from None
    if save is not None:
        save(state())
    if ema is not None:
        student.load_state_dict(ema.ema.state_dict())
    student.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    student.eval()
    recent = parts_hist[-20:]
    mean_parts = (
        {k: float(np.mean([r[k] for r in recent if k in r])) for k in recent[-1]} if recent else {}
    )
    return LoopResult(
        steps=step,
        elapsed_s=elapsed(),
        losses=losses,
        parts=mean_parts,
        resumed_from=start_step,
    )
