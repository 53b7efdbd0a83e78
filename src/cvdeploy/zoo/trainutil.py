"""Training helpers shared by the detector and classifier loops.

Weight EMA, a warm-up + cosine schedule driven by progress (iterations and/or elapsed time),
optimizer parameter groups, a rich progress display and checkpoint writing.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ModelEMA",
    "Schedule",
    "TrainDisplay",
    "checkpoint_state",
    "make_optimizer",
    "save_checkpoint",
    "thread_limit",
]


class ModelEMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    The decay ramps up as ``decay * (1 - exp(-updates / tau))`` so early, noisy weights
    are forgotten quickly.

    Args:
        model: The model being trained.
        decay: Final decay.
        tau: Ramp-up constant, in updates.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.998, tau: float = 100.0) -> None:
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the model's current weights into the average."""
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


@dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule over training progress in ``[0, 1]``.

    Progress is the larger of ``iteration / total_iters`` and ``elapsed / budget_s`` (each
    when given), so a time budget stretches or shrinks the whole schedule to fit.

    Attributes:
        total_iters: Planned iterations, or None.
        budget_s: Time budget in seconds, or None.
        warmup: Fraction of progress spent in linear warm-up.
        final_ratio: Final learning rate as a fraction of the initial one.
    """

    total_iters: int | None
    budget_s: float | None
    warmup: float = 0.03
    final_ratio: float = 0.02

    def progress(self, iteration: int, elapsed_s: float) -> float:
        """Return training progress (``>= 1`` means done)."""
        p = 0.0
        if self.total_iters:
            p = max(p, iteration / self.total_iters)
        if self.budget_s:
            p = max(p, elapsed_s / self.budget_s)
        return p

    def lr_factor(self, progress: float) -> float:
        """Return the learning-rate multiplier at a given progress."""
        if progress < self.warmup:
            return max(progress / self.warmup, 0.01)
        t = min((progress - self.warmup) / max(1 - self.warmup, 1e-9), 1.0)
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on conv/linear weights only (not on norms and biases)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_weight = name == "weight" and not isinstance(module, nn.modules.batchnorm._BatchNorm)
            (decay if is_weight else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.937, 0.999))


@contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the duration of the block (no-op when None)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat denormal floats as zero on the CPU for the duration of the block.

    Adam's second moments and the EMA of small weights drift into the denormal range during
    training, and x86 CPUs compute on denormals many times slower: without this, the second
    epoch of the zoo detector took 10 minutes here instead of 2.4. Restored to the default
    (off) afterwards.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class TrainDisplay:
    """A rich progress bar (epoch, iteration, loss parts, ETA) or nothing.

    Args:
        enabled: Show the bar.
        title: Text in front of the bar.
    """

    def __init__(self, *, enabled: bool, title: str) -> None:
        self.enabled = enabled
        self.title = title
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> TrainDisplay:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.title, total=1000, info="")
        return self

    def update(self, *, progress: float, description: str, info: str) -> None:
        """Move the bar to ``progress`` (0..1) and refresh the texts."""
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=min(progress, 1.0) * 1000,
                description=f"{self.title} {description}",
                info=info,
            )

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)


def checkpoint_state(model: nn.Module, *, half: bool = True) -> dict[str, torch.Tensor]:
    """Return a contiguous CPU state dict, floating tensors in fp16 when ``half``."""
    out = {}
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu").contiguous().clone()
        if half and t.dtype.is_floating_point:
            t = t.half()
        out[k] = t
    return out


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


class Stopwatch:
    """Seconds since creation."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        """Return elapsed seconds."""
        return time.perf_counter() - self.t0
