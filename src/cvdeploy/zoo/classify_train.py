"""Training of the zoo classifier on an ImageNet-style folder tree (``train/<class>/*``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cvdeploy.errors import DatasetError, UsageError
from cvdeploy.zoo.models import build_model, model_task
from cvdeploy.zoo.trainset import IMAGE_SUFFIXES
from cvdeploy.zoo.trainutil import (
    ModelEMA,
    Schedule,
    Stopwatch,
    TrainDisplay,
    checkpoint_state,
    make_optimizer,
    save_checkpoint,
    thread_limit,
)

__all__ = ["ClassifierResult", "load_image_folder", "train_classifier"]

PREPROCESS = {"color": "RGB", "scale": 1 / 255, "resize": "stretch", "pad_value": 114}


@dataclass(frozen=True)
class ClassifierResult:
    """Outcome of a classifier training run.

    Attributes:
        model: Architecture name.
        best: Path of ``best.pt`` (highest validation top-1).
        last: Path of ``last.pt``.
        metrics: ``top1`` (and ``top1_val``-based history) of the final weights, plus
            whatever ``evaluate`` returned.
        elapsed_s: Wall-clock seconds.
        epochs: Epochs run.
        iterations: Optimizer steps.
    """

    model: str
    best: Path
    last: Path
    metrics: dict[str, float]
    elapsed_s: float
    epochs: int
    iterations: int


def load_image_folder(
    root: Path, *, imgsz: int, names: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load ``root/<class>/*`` images (RGB, resized to ``imgsz``) into memory.

    Args:
        root: Split folder holding one sub-folder per class.
        imgsz: Side the images are resized to.
        names: Class order to use (sorted folder names when None).

    Returns:
        ``(images [n, s, s, 3] uint8, labels [n] int64, names)``.

    Raises:
        DatasetError: If the folder has no class folders or no images.
    """
    root = Path(root)
    if names is None:
        names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not names:
        raise DatasetError(
            f"no class folders in {root}", hint="expected <split>/<class_name>/*.png"
        )
    images, labels = [], []
    for k, name in enumerate(names):
        for f in sorted((root / name).glob("*")):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise DatasetError(f"cannot decode image {f}")
            images.append(cv2.resize(img, (imgsz, imgsz), interpolation=cv2.INTER_AREA)[..., ::-1])
            labels.append(k)
    if not images:
        raise DatasetError(f"no images under {root}")
    return np.stack(images), np.array(labels, np.int64), names


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = img.shape[0]
    scale = float(rng.uniform(0.8, 1.2))
    tx, ty = (float(v) for v in rng.uniform(-0.1, 0.1, 2) * s)
    m = np.array([[scale, 0, (1 - scale) * s / 2 + tx], [0, scale, (1 - scale) * s / 2 + ty]])
    out = cv2.warpAffine(img, m, (s, s), borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    gain = rng.uniform(0.7, 1.3, 3)
    return np.clip(out * gain, 0, 255).astype(np.uint8)


def _to_tensor(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def _top1(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), 128):
        logits = model(_to_tensor(images[i : i + 128]))
        correct += int((logits.argmax(1).numpy() == labels[i : i + 128]).sum())
    return correct / len(images)


def train_classifier(
    *,
    model: str = "classifier-n",
    data: Path,
    out_dir: Path,
    epochs: int | None = None,
    time_budget_s: float | None = None,
    imgsz: int = 64,
    batch: int = 64,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    lr: float = 0.003,
) -> ClassifierResult:
    """Train a zoo classifier on ``data/train/<class>/*`` (validated on ``data/val``).

    Args:
        model: Classifier architecture (``classifier-n``).
        data: Dataset root with ``train/`` and optionally ``val/`` class folders.
        out_dir: Where ``last.pt`` and ``best.pt`` are written.
        epochs: Number of epochs (with ``time_budget_s``, whichever ends first).
        time_budget_s: Time budget; the LR schedule follows elapsed / budget.
        imgsz: Square input size.
        batch: Batch size.
        seed: Seed.
        threads: torch intra-op threads during training (unchanged when None).
        progress: Show a rich progress bar.
        evaluate: Called at the end with the final model (eval mode).
        lr: Peak AdamW learning rate.

    Returns:
        A :class:`ClassifierResult`.

    Raises:
        UsageError: On bad options.
        DatasetError: If the dataset cannot be read.
    """
    if model_task(model) != "classify":
        raise UsageError(f"{model!r} is not a classifier", hint="use train_detector for detectors")
    if epochs is None and time_budget_s is None:
        raise UsageError("give epochs and/or time_budget_s")
    clock = Stopwatch()
    data, out_dir = Path(data), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x_train, y_train, names = load_image_folder(data / "train", imgsz=imgsz)
    val = (
        load_image_folder(data / "val", imgsz=imgsz, names=names)
        if (data / "val").is_dir()
        else None
    )
    train_args: dict[str, Any] = {
        "model": model, "data": str(data), "epochs": epochs, "time_budget_s": time_budget_s,
        "imgsz": imgsz, "batch": batch, "seed": seed, "lr": lr,
    }  # fmt: skip
    with thread_limit(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        net = build_model(model, num_classes=len(names)).train()
        ema = ModelEMA(net, decay=0.99, tau=20)
        opt = make_optimizer(net, lr=lr, weight_decay=0.0005)
        n_batches = max(len(x_train) // batch, 1)
        sched = Schedule(total_iters=epochs * n_batches if epochs else None, budget_s=time_budget_s)
        it, epoch, p, best = 0, 0, 0.0, -1.0
        metrics: dict[str, float] = {}
        with TrainDisplay(enabled=progress, title=model) as display:
            while sched.progress(it, clock()) < 1.0:
                epoch += 1
                order = rng.permutation(len(x_train))
                for b in range(n_batches):
                    p = sched.progress(it, clock())
                    if p >= 1.0:
                        break
                    for g in opt.param_groups:
                        g["lr"] = lr * sched.lr_factor(p)
                    idx = order[b * batch : (b + 1) * batch]
                    x = _to_tensor(np.stack([_augment(x_train[i], rng) for i in idx]))
                    loss = F.cross_entropy(
                        net(x), torch.from_numpy(y_train[idx]), label_smoothing=0.1
                    )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    ema.update(net)
                    it += 1
                    display.update(
                        progress=sched.progress(it, clock()),
                        description=f"epoch {epoch} it {b + 1}/{n_batches}",
                        info=f"loss {loss.item():.3f}",
                    )
                metrics = {"top1": _top1(ema.ema, *val[:2])} if val is not None else {}
                ckpt: dict[str, Any] = {
                    "model": model, "task": "classify", "num_classes": len(names), "names": names,
                    "imgsz": imgsz, "state_dict": checkpoint_state(ema.ema),
                    "train_args": train_args, "metrics": metrics, "elapsed_s": round(clock(), 2),
                    "epoch": epoch, "iterations": it, "preprocess": PREPROCESS,
                    "torch_version": str(torch.__version__),
                }  # fmt: skip
                save_checkpoint(out_dir / "last.pt", ckpt)
                if metrics.get("top1", 0.0) >= best:
                    best = metrics.get("top1", 0.0)
                    save_checkpoint(out_dir / "best.pt", ckpt)
        if evaluate is not None:
            final = build_model(model, num_classes=len(names))
            final.load_state_dict(
                {
                    k: v.float() if v.is_floating_point() else v
                    for k, v in ckpt["state_dict"].items()
                }
            )
            metrics = {**metrics, **evaluate(final.eval())}
            ckpt["metrics"] = metrics
            save_checkpoint(out_dir / "last.pt", ckpt)
            if metrics.get("top1", 0.0) >= best:
                save_checkpoint(out_dir / "best.pt", ckpt)
    return ClassifierResult(
        model=model,
        best=out_dir / "best.pt",
        last=out_dir / "last.pt",
        metrics=metrics,
        elapsed_s=clock(),
        epochs=epoch,
        iterations=it,
    )
