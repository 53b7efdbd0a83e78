"""PyTorch backend: runs a cvdeploy torch checkpoint (the source of exports).

A torch artifact is a ``model.pt`` file holding ``{"format": "cvdeploy-torch", "builder":
..., "num_classes": ..., "state_dict": ...}``. ``builder`` is ``"zoo:NAME"`` for a model of
the bundled zoo, ``"factory:module:function"`` for a user's factory returning a
``torch.nn.Module``, or ``"onnx:SHA256-PREFIX"`` for an imported ONNX model run as torch (its
graph and spec travel in the checkpoint's ``builder_data``: tensors and plain values, no
code). Only state dicts are loaded (``weights_only=True``): no pickled code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvdeploy.errors import ModelLoadError, UsageError
from cvdeploy.registry import Registry
from cvdeploy.runtime.base import Runner, reject_unknown

CHECKPOINT_FORMAT = "cvdeploy-torch"
BUILDERS = Registry("torch model builder")
"""Builders named by a checkpoint's ``builder`` prefix (``zoo:NAME``); registered by name, so
the runtime layer never imports the packages above it (the zoo)."""
BUILDERS.register(
    "zoo",
    "cvdeploy.zoo.models:build_model",
    requires=("torch",),
    extra="torch",
    description="the bundled zoo architectures",
)
BUILDERS.register(
    "pruned",
    "cvdeploy.compress.rewrite:build_prunable",
    requires=("torch",),
    extra="torch",
    description="a model as `cvdeploy prune` rewrote it (``pruned:zoo:NAME``, "
    "``pruned:factory:module:function``); its channel counts come from the checkpoint",
)
BUILDERS.register(
    "onnx",
    "cvdeploy.compress.onnx_source:build_onnx_source",
    requires=("torch", "onnx"),
    extra="compress",
    description="an imported ONNX model run as torch (``onnx:SHA256-PREFIX``); its graph and "
    "spec are the checkpoint's builder data",
)


def save_checkpoint(
    path: Path,
    *,
    builder: str,
    num_classes: int,
    state_dict: dict[str, torch.Tensor],
    shapes_from_weights: bool = False,
    builder_data: dict[str, Any] | None = None,
) -> None:
    """Write a torch artifact checkpoint.

    ``shapes_from_weights`` marks a model whose layers are narrower than its builder makes
    them (a pruned model): loading resizes every convolution, norm and linear layer to the
    stored weights before loading them (see :func:`conform_to_state_dict`).
    ``builder_data`` is what the builder needs besides its name (tensors and plain values:
    an ``onnx:`` builder's graph and spec), handed back to it by :func:`load_checkpoint`.
    """
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "builder": builder,
        "num_classes": num_classes,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    if shapes_from_weights:
        payload["shapes_from_weights"] = True
    if builder_data is not None:
        payload["builder_data"] = builder_data
    torch.save(payload, path)


def conform_to_state_dict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Resize ``module``'s Conv/BatchNorm/Linear layers (in place) to the shapes in
    ``state_dict``, so that a physically pruned model's weights load into its architecture.

    Only the tensors are replaced (uninitialised; load the state dict afterwards) and the
    layers' size attributes updated; forward code that derives sizes from its layers or
    inputs then runs unchanged.
    """
    nn = torch.nn
    for name, mod in module.named_modules():
        prefix = f"{name}." if name else ""
        w = state_dict.get(f"{prefix}weight")
        if isinstance(mod, nn.Conv2d) and w is not None and w.shape != mod.weight.shape:
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels
            mod.out_channels = int(w.shape[0])
            if depthwise:
                mod.groups = mod.in_channels = int(w.shape[0])
            else:
                mod.in_channels = int(w.shape[1]) * mod.groups
            mod.weight = nn.Parameter(torch.empty_like(w, dtype=mod.weight.dtype))
            if mod.bias is not None:
                mod.bias = nn.Parameter(torch.empty(w.shape[0], dtype=mod.bias.dtype))
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            rm = state_dict.get(f"{prefix}running_mean")
            n = int(rm.shape[0]) if rm is not None else (int(w.shape[0]) if w is not None else 0)
            if n and n != mod.num_features:
                mod.num_features = n
                if mod.weight is not None:
                    mod.weight = nn.Parameter(torch.empty(n))
                    mod.bias = nn.Parameter(torch.empty(n))
                if mod.running_mean is not None:
                    mod.running_mean = torch.zeros(n)
                    mod.running_var = torch.ones(n)
        elif isinstance(mod, nn.Linear) and w is not None and w.shape != mod.weight.shape:
            mod.out_features, mod.in_features = int(w.shape[0]), int(w.shape[1])
            mod.weight = nn.Parameter(torch.empty_like(w, dtype=mod.weight.dtype))
            if mod.bias is not None:
                mod.bias = nn.Parameter(torch.empty(w.shape[0], dtype=mod.bias.dtype))


def build_module(
    builder: str, *, num_classes: int, data: dict[str, Any] | None = None
) -> torch.nn.Module:
    """Instantiate the module a builder string names (weights not loaded).

    ``data``: the checkpoint's builder data, passed to a registered builder that needs it
    (``onnx:``); the others never receive any.
    """
    kind, _, rest = builder.partition(":")
    if kind in BUILDERS.names():
        extra = {} if data is None else {"data": data}
        module: torch.nn.Module = BUILDERS.get(kind)(rest, num_classes=num_classes, **extra)
        return module
    if kind == "factory":
        mod_name, _, fn_name = rest.partition(":")
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as exc:
            raise ModelLoadError(
                f"cannot import model factory {rest!r}: {exc}",
                hint="make the module importable (PYTHONPATH) and check the "
                "'module:function' spelling",
            ) from exc
        module = fn()
        if not isinstance(module, torch.nn.Module):
            raise ModelLoadError(
                f"factory {rest!r} returned {type(module).__name__}, not a torch.nn.Module"
            )
        return module
    raise ModelLoadError(f"unknown torch builder {builder!r}")


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a torch artifact checkpoint into an eval-mode module."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupted files
        raise ModelLoadError(
            f"cannot read torch checkpoint {path.name}: {exc}".splitlines()[0],
            hint="the file may be corrupted; re-create the artifact",
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{path.name} is not a cvdeploy torch checkpoint")
    module = build_module(
        str(ckpt["builder"]), num_classes=int(ckpt["num_classes"]), data=ckpt.get("builder_data")
    )
    try:
        if ckpt.get("shapes_from_weights"):
            conform_to_state_dict(module, ckpt["state_dict"])
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ModelLoadError(
            f"weights in {path.name} do not fit the model: {str(exc).splitlines()[0]}"
        ) from exc
    return module.eval(), ckpt


def reduced_fp32_settings() -> list[str]:
    """Process-wide torch settings that let FP32 convolutions/matmuls compute in less.

    ``torch.set_float32_matmul_precision("medium")`` and the oneDNN ``fp32_precision`` knobs
    (``bf16``/``tf32``) belong to the application; the runner does not change them, it
    refuses to run an FP32 artifact under them.
    """
    found = []
    if torch.get_float32_matmul_precision() != "highest":
        found.append(
            f"torch.set_float32_matmul_precision({torch.get_float32_matmul_precision()!r})"
        )
    mkldnn = getattr(torch.backends, "mkldnn", None)
    for part in ("conv", "matmul"):
        value = getattr(getattr(mkldnn, part, None), "fp32_precision", "none")
        if value not in ("none", "ieee"):
            found.append(f"torch.backends.mkldnn.{part}.fp32_precision={value!r}")
    return found


class TorchRunner(Runner):
    """Runs a cvdeploy torch checkpoint on the CPU (or CUDA with ``device='cuda'``), in FP32.

    Autocast is switched off around each call (thread-local), and a process whose torch
    settings allow reduced-precision FP32 kernels is refused (see :func:`reduced_fp32_settings`).

    Note: ``threads`` calls ``torch.set_num_threads``, which is process-wide in PyTorch;
    it is only called when given explicitly.
    """

    format = "torch"

    def _load(self) -> None:
        reject_unknown(self.options.extra, set(), "torch")
        reduced = reduced_fp32_settings()
        if reduced:
            raise UsageError(
                "this process lets torch compute FP32 in reduced precision "
                f"({', '.join(reduced)}), so {self.model_path.name} would not run at the FP32 "
                "it records",
                hint="reset those settings before running FP32 artifacts in this process",
            )
        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        self.module, _ = load_checkpoint(self.model_path)
        self.device = torch.device("cuda" if self.options.device in ("cuda", "gpu") else "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("torch here has no CUDA device", hint="use device cpu")
        self.module.to(self.device)

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            out = self.module(torch.from_numpy(x).to(self.device))
        outs = out if isinstance(out, list | tuple) else [out]
        return [o.float().cpu().numpy() for o in outs]

    def _close(self) -> None:
        del self.module
