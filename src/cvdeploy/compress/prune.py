"""Physical channel pruning with torch-pruning's dependency graph (DepGraph).

Channels are removed from the weights (never masked): every layer that shares a channel
dimension (residual additions, concatenations, the C2f split after
:func:`cvdeploy.compress.rewrite.make_prunable`) is pruned together, channel counts are
rounded to a multiple the runtime likes (``round_to``), and the layers that produce the
model's outputs keep theirs (found in the graph: the groups that reach an output), so the
output layout is unchanged.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cvdeploy.errors import UsageError

__all__ = [
    "IMPORTANCES",
    "MAX_RATIO",
    "check_ratio",
    "count_macs",
    "output_layers",
    "prune_step",
]

IMPORTANCES = ("l1", "l2", "bn", "taylor", "lamp")
"""Channel importance criteria (``taylor`` needs a gradient: a distillation loss batch)."""
MAX_RATIO = 0.9
"""Largest channel ratio accepted."""


def _tp() -> Any:
    try:
        import torch_pruning as tp
    except ImportError as exc:  # pragma: no cover - an install problem
        from cvdeploy.errors import BackendUnavailable

        raise BackendUnavailable(
            "pruning needs torch-pruning: pip install 'cvdeploy[compress]'"
        ) from exc
    return tp


def make_importance(name: str) -> Any:
    """The torch-pruning importance object of a criterion name."""
    tp = _tp()
    imp = tp.importance
    table: dict[str, Callable[[], Any]] = {
        "l1": lambda: imp.MagnitudeImportance(p=1),
        "l2": lambda: imp.MagnitudeImportance(p=2),
        "bn": lambda: imp.BNScaleImportance(),
        "taylor": lambda: imp.TaylorImportance(),
        "lamp": lambda: imp.LAMPImportance(p=2),
    }
    if name not in table:
        raise UsageError(
            f"unknown importance {name!r}", hint=f"choose one of {', '.join(IMPORTANCES)}"
        )
    return table[name]()


def trace_forward(model: nn.Module, x: torch.Tensor) -> Any:
    """The forward pass torch-pruning traces.

    A zoo detector is traced to its head branches' outputs, one tensor per branch and level:
    its decoding concatenates the levels along the anchor axis and splits boxes from
    classes, which the dependency graph would read as channel operations.
    """
    head = getattr(model, "head", None)
    if hasattr(model, "forward_raw") and head is not None and hasattr(head, "box"):
        feats: list[torch.Tensor] = []
        original = head.raw

        def branches(f: list[torch.Tensor]) -> list[torch.Tensor]:
            return [b(t) for t, b in zip(f, head.box, strict=True)] + [
                c(t) for t, c in zip(f, head.cls, strict=True)
            ]

        head.raw = branches
        try:
            feats = model.forward_raw(x)  # type: ignore[operator]
        finally:
            head.raw = original
            del head.raw  # back to the class's method
        return feats
    return model(x)


def _graph(model: nn.Module, x: torch.Tensor) -> Any:
    tp = _tp()
    was = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=x, forward_fn=trace_forward
            )
    except Exception as exc:  # torch-pruning raises many types on graphs it cannot read
        raise UsageError(
            f"torch-pruning cannot trace this model: {type(exc).__name__}: {exc}"[:300],
            hint="the model's forward must be traceable by autograd (no data-dependent "
            "control flow over channels)",
        ) from exc
    finally:
        model.train(was)


def output_layers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The convolution/linear layers whose output channels are a model output: following
    the graph from the layer, an output is reached before any other convolution/linear
    layer (through norms, activations, reshapes, concatenations...)."""
    dg = _graph(model, x)
    found: list[nn.Module] = []
    for m in model.modules():
        if not isinstance(m, nn.Conv2d | nn.Linear):
            continue
        node = dg.module2node.get(m)
        if node is not None and _reaches_output(node):
            found.append(m)
    if not found:
        raise UsageError("found no layer producing the model's output: cannot keep its layout")
    return found


def _reaches_output(node: Any) -> bool:
    tp = _tp()
    seen, stack = set(), list(node.outputs)
    if not stack:
        return True
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n.module, nn.Conv2d | nn.Linear):
            continue  # absorbs a change of channels
        if isinstance(n.module, tp.ops._OutputOp) or not n.outputs:
            return True
        stack.extend(n.outputs)
    return False


def _pruner(
    model: nn.Module, x: torch.Tensor, *, ratio: float, importance: Any, round_to: int | None
) -> Any:
    tp = _tp()
    keep = output_layers(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.pruner.MetaPruner(
            model,
            x,
            importance=importance,
            forward_fn=trace_forward,
            pruning_ratio=ratio,
            ignored_layers=keep,
            round_to=round_to,
        )


def _widths(model: nn.Module) -> dict[str, int]:
    return {
        n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    }


def prune_step(
    model: nn.Module,
    x: torch.Tensor,
    *,
    ratio: float,
    importance: str = "l2",
    round_to: int | None = 8,
    gradient: Callable[[nn.Module], None] | None = None,
) -> dict[str, tuple[int, int]]:
    """Remove a fraction of the channels of every prunable group of ``model`` (in place).

    Args:
        model: The model (after :func:`make_prunable`), in eval mode afterwards.
        x: An example input batch.
        ratio: Fraction of each group's current channels to remove.
        importance: One of :data:`IMPORTANCES`.
        round_to: Keep channel counts multiples of this (``None``: any count).
        gradient: Fills the weights' ``.grad`` (needed by ``taylor``).

    Returns:
        ``{layer: (channels before, after)}`` for the layers that changed.
    """
    if not 0 < ratio < 1:
        raise UsageError(f"a pruning step's ratio must be in (0, 1), got {ratio:.3f}")
    imp = make_importance(importance)
    before = _widths(model)
    if importance == "taylor":
        if gradient is None:
            raise UsageError("taylor importance needs a gradient (a loss on a batch)")
        model.zero_grad(set_to_none=True)
        gradient(model)
    pruner = _pruner(model, x, ratio=ratio, importance=imp, round_to=round_to)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    after = _widths(model)
    return {n: (before[n], after[n]) for n in after if before.get(n) != after[n]}


def check_ratio(
    model: nn.Module, x: torch.Tensor, *, ratio: float, round_to: int | None, head_min: int = 8
) -> None:
    """Refuse a ratio that would break the model's head or output, before any work.

    The ratio is applied (L2 importance) to a copy: it is refused when a layer of the head
    (a module under ``head``, or a layer feeding an output layer) would keep fewer than
    ``max(round_to, head_min)`` channels, when any layer would keep none, or when the output
    shape would change.

    Raises:
        UsageError: Naming the layer, its channels before and after, and the largest ratio
            that keeps it.
    """
    if not 0 < ratio <= MAX_RATIO:
        raise UsageError(
            f"--ratio must be in (0, {MAX_RATIO}], got {ratio}",
            hint="it is the fraction of channels removed from every prunable layer",
        )
    trial = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref = trace_forward(trial, x)
    changed = prune_step(trial, x, ratio=ratio, importance="l2", round_to=round_to)
    floor = max(round_to or 1, head_min)
    outputs = {id(m) for m in output_layers(trial, x)}
    feeding = _feeding_names(trial, outputs)
    for name, (b, a) in changed.items():
        if a == 0 or ((name.startswith("head.") or name in feeding) and a < min(floor, b)):
            largest = max(0.0, 1 - floor / b)
            raise UsageError(
                f"--ratio {ratio} would leave {name} with {a} of its {b} channels: the "
                f"model's head needs at least {min(floor, b)} there (round-to {round_to or 1})",
                hint=f"use --ratio {largest:.2f} or less",
            )
    with torch.no_grad():
        got = trace_forward(trial, x)
    ref_l = ref if isinstance(ref, list | tuple) else [ref]
    got_l = got if isinstance(got, list | tuple) else [got]
    if [tuple(t.shape) for t in ref_l] != [tuple(t.shape) for t in got_l]:
        raise UsageError(f"--ratio {ratio} would change the model's output shape")


def _feeding_names(model: nn.Module, output_ids: set[int]) -> set[str]:
    """Names of the conv layers right before an output layer in module order (a head's
    hidden layers in a model that has no ``head`` attribute)."""
    names, prev = set(), None
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            if id(m) in output_ids and prev is not None:
                names.add(prev)
            prev = n
    return names


def count_macs(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """``(multiply-accumulates, parameters)`` of one forward pass on ``x``."""
    tp = _tp()
    was = model.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, params = tp.utils.count_ops_and_params(model.eval(), x)
    model.train(was)
    return int(macs), int(params)
