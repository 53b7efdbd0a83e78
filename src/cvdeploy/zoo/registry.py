"""The zoo's shipped weights: list them, load them (or any zoo checkpoint) into a model.

Each shipped model is ``weights/<name>.pt`` (a checkpoint written by the zoo's training)
plus ``weights/<name>.json`` (metadata: class names, input size, metrics, how it was made).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch

from cvdeploy.errors import ModelLoadError, UsageError
from cvdeploy.zoo.models import available_models, build_model, model_task

__all__ = ["ZooEntry", "list_zoo", "load_checkpoint", "load_zoo_model", "weights_dir"]

_REQUIRED = ("model", "num_classes", "names", "imgsz", "state_dict")


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: what it is, where its weights are, how good it is.

    Attributes:
        name: Entry name (``detector-n``) or checkpoint file stem.
        task: ``detect`` or ``classify``.
        architecture: Name accepted by :func:`cvdeploy.zoo.models.build_model`.
        names: Class names in index order.
        imgsz: Input side the model was trained at.
        weights: Checkpoint path.
        metrics: Metrics measured at training time (read-only mapping).
        params: Number of parameters.
        preprocess: Expected input (colour order, scale, resize mode, pad value).
    """

    name: str
    task: Literal["detect", "classify"]
    architecture: str
    names: tuple[str, ...]
    imgsz: int
    weights: Path
    metrics: MappingProxyType[str, float]
    params: int
    preprocess: MappingProxyType[str, Any]


def weights_dir() -> Path:
    """Return the folder that holds the shipped weights."""
    return Path(__file__).resolve().parent / "weights"


def list_zoo() -> list[ZooEntry]:
    """Return the shipped models, sorted by name (from their metadata json files)."""
    entries = []
    for meta_path in sorted(weights_dir().glob("*.json")):
        weights = meta_path.with_suffix(".pt")
        if not weights.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        entries.append(
            ZooEntry(
                name=meta_path.stem,
                task=model_task(meta["model"]),
                architecture=meta["model"],
                names=tuple(meta["names"]),
                imgsz=int(meta["imgsz"]),
                weights=weights,
                metrics=MappingProxyType(dict(meta.get("metrics", {}))),
                params=int(meta.get("params", 0)),
                preprocess=MappingProxyType(dict(meta.get("preprocess", {}))),
            )
        )
    return entries


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and validate a zoo checkpoint (tensors and plain values only).

    Raises:
        ModelLoadError: If the file is missing, unreadable or not a zoo checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupted files
        raise ModelLoadError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}",
            hint="the file is corrupted or not a cvdeploy zoo checkpoint; retrain or restore it",
        ) from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED):
        raise ModelLoadError(
            f"{path} is not a cvdeploy zoo checkpoint (needs keys {', '.join(_REQUIRED)})"
        )
    if ckpt["model"] not in available_models():
        raise ModelLoadError(
            f"{path} is for an unknown architecture {ckpt['model']!r}",
            hint=f"known: {', '.join(available_models())}",
        )
    return ckpt


def load_zoo_model(name_or_checkpoint_path: str | Path) -> tuple[torch.nn.Module, ZooEntry]:
    """Load a shipped zoo model by name, or any zoo checkpoint by path.

    Args:
        name_or_checkpoint_path: ``detector-n`` / ``classifier-n`` or a ``.pt`` path
            written by :func:`cvdeploy.zoo.train.train_detector` / ``train_classifier``.

    Returns:
        ``(model in eval mode with fp32 weights, its ZooEntry)``.

    Raises:
        UsageError: If the name is neither a shipped model nor an existing file.
        ModelLoadError: If the checkpoint is corrupted or does not fit its architecture.
    """
    shipped = {e.name: e for e in list_zoo()}
    key = str(name_or_checkpoint_path)
    meta: dict[str, Any] = {}
    if key in shipped:
        path = shipped[key].weights
        meta = json.loads(path.with_suffix(".json").read_text())
    else:
        path = Path(name_or_checkpoint_path)
        if not path.is_file():
            raise UsageError(
                f"unknown zoo model {key!r} (not a shipped name, not a file)",
                hint=f"available: {', '.join(sorted(shipped)) or '(none shipped)'}, or a .pt path",
            )
    ckpt = load_checkpoint(path)
    try:
        model = build_model(ckpt["model"], num_classes=int(ckpt["num_classes"]))
        state = {
            k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()
        }
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise ModelLoadError(
            f"checkpoint {path} does not fit architecture {ckpt['model']!r}: {exc}",
            hint="the file is corrupted or was written by an incompatible version",
        ) from exc
    model.eval()
    entry = ZooEntry(
        name=key if key in shipped else path.stem,
        task=model_task(ckpt["model"]),
        architecture=ckpt["model"],
        names=tuple(str(n) for n in ckpt["names"]),
        imgsz=int(ckpt["imgsz"]),
        weights=path,
        metrics=MappingProxyType(dict(meta.get("metrics") or ckpt.get("metrics") or {})),
        params=sum(p.numel() for p in model.parameters()),
        preprocess=MappingProxyType(dict(ckpt.get("preprocess") or {})),
    )
    return model, entry
