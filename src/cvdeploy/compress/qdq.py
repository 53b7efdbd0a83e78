"""Quantization-aware training with torchao's PT2E flow, exported as an explicit Q/DQ ONNX.

Why torchao PT2E (and not NNCF's PyTorch QAT): with torch 2.13.0+cpu, NNCF 3.4's torch
backend compiles a C++ extension at run time (``quantized_functions_cpu``), which needs a
compiler and timed out here (60 s) on the first fake-quantized forward; ``torch.ao``'s eager
QAT is deprecated in favour of torchao. torchao 0.18's PT2E flow is pure PyTorch:
``torch.export`` -> ``prepare_qat_pt2e`` (fake quantization, conv-BN folding simulated) ->
train -> ``convert_pt2e`` (quantize/dequantize ops), and torch's dynamo ONNX exporter
(with onnxscript) writes those as ``QuantizeLinear``/``DequantizeLinear`` pairs: the
FakeQuantize modules never reach the exporter (pytorch #167063) and nothing is decomposed
into Mul/Round/Add (pytorch #127167), which :func:`qdq_structure` checks on every export.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections import Counter, deque
from pathlib import Path
from typing import Any

import torch

from cvdeploy.compress.loss import SCORE_FLOOR
from cvdeploy.errors import BackendUnavailable, CheckFailed, UsageError

__all__ = [
    "DECOMPOSED_OPS",
    "FLOAT_ERROR_MIN",
    "FLOAT_SHARE_MIN",
    "SCHEMES",
    "dominant_quantizers",
    "export_qdq_onnx",
    "keep_float",
    "prepare_qat",
    "qdq_structure",
    "scheme_of",
]

DECOMPOSED_OPS = ("Round", "Floor", "Ceil")
"""Ops that appear when a quantizer is decomposed into arithmetic instead of Q/DQ nodes."""
OPSET = 21
SCHEMES = ("default", "per-tensor", "aggressive", "aggressive-symmetric")
"""The quantization schemes of ``cvdeploy qat`` (PTQ baseline and QAT model alike):

* ``default``: int8 per-channel weights; the head's last convolutions take quantized
  inputs and weights but their outputs (the raw box-distribution and class logits) and the
  decoding stay in float (the rule of ``cvdeploy quantize``);
* ``per-tensor``: the same with one weight scale per convolution;
* ``aggressive``: per-tensor weights and every layer quantized: the head's last
  convolutions' outputs (box-distribution and class logits) also go through
  QuantizeLinear/DequantizeLinear; only the decoding arithmetic after them (DFL softmax,
  anchors, box arithmetic, sigmoid) stays in float;
* ``aggressive-symmetric``: ``aggressive`` with int8 symmetric activations (zero point 0,
  TensorRT's scheme) whatever the backend; ``--backend tensorrt`` makes every scheme's
  activations symmetric.
"""


def _ao() -> Any:
    # torchao's import warns that its CUDA kernels do not load on a CPU-only torch, and
    # torch that a torchao enum registration is deprecated: neither concerns PT2E on CPU
    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        import torchao.quantization.pt2e as ao
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as exc:  # pragma: no cover - an install problem
        raise BackendUnavailable("QAT needs torchao: pip install 'cvdeploy[compress]'") from exc
    finally:
        for lg, lv in zip(quiet, levels, strict=True):
            lg.setLevel(lv)
    return ao, quantize_pt2e, x86


def scheme_of(
    *, per_channel: bool, symmetric_activations: bool, head_outputs: bool = False, name: str = ""
) -> dict[str, Any]:
    """The quantization scheme as recorded with the artifact."""
    if head_outputs:
        quantized = (
            "every layer: convolution/linear inputs and weights, the ops torchao's "
            "X86InductorQuantizer pairs with them (max-pool, add, concat), and the outputs of "
            "the head's last convolutions (the raw box-distribution and class logits)"
        )
        kept = (
            "the detection head's decoding after the quantized logits (DFL softmax, anchors, "
            "box arithmetic, sigmoid, concatenations)"
        )
    else:
        quantized = (
            "convolution/linear inputs and weights, and the ops torchao's "
            "X86InductorQuantizer pairs with them (max-pool, add, concat)"
        )
        kept = (
            "the detection head's decoding (DFL softmax, box arithmetic, sigmoid, "
            "concatenations); the head's output convolutions take quantized inputs and "
            "weights but their outputs (the logits) stay float"
        )
    return {
        **({"name": name} if name else {}),
        "weights": "int8 symmetric " + ("per-channel" if per_channel else "per-tensor"),
        "activations": "int8 symmetric per-tensor"
        if symmetric_activations
        else "uint8 asymmetric per-tensor",
        "quantized": quantized,
        "float": kept,
        "head_outputs_quantized": head_outputs,
        "tool": "torchao PT2E (prepare_qat_pt2e / convert_pt2e), X86InductorQuantizer",
    }


def _config(*, per_channel: bool, symmetric_activations: bool) -> Any:
    ao, _, _ = _ao()
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec

    extra: dict[str, Any] = {"eps": 2**-12}
    act = QuantizationSpec(
        dtype=torch.int8 if symmetric_activations else torch.uint8,
        quant_min=-128 if symmetric_activations else 0,
        quant_max=127 if symmetric_activations else 255,
        qscheme=torch.per_tensor_symmetric if symmetric_activations else torch.per_tensor_affine,
        is_dynamic=False,
        observer_or_fake_quant_ctr=ao.FusedMovingAvgObsFakeQuantize.with_args(**extra),
    )
    weight_obs = (
        ao.MovingAveragePerChannelMinMaxObserver if per_channel else ao.MovingAverageMinMaxObserver
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
        ch_axis=0,
        is_dynamic=False,
        observer_or_fake_quant_ctr=ao.FusedMovingAvgObsFakeQuantize.with_args(
            observer=weight_obs, **extra
        ),
    )
    return QuantizationConfig(act, act, weight, None, True)


def _is_conv(node: Any) -> bool:
    name = str(getattr(node.target, "__name__", node.target))
    return node.op == "call_function" and name.split(".")[0] in ("conv2d", "linear", "addmm")


def float_head(graph: Any, *, output_qspec: Any = None) -> int:
    """Keep the head's decoding in float: clear the quantization annotations of every node
    between the last convolutions (those whose output reaches a graph output without another
    convolution) and the outputs, and of those convolutions' outputs. Their inputs and
    weights stay quantized, as ``cvdeploy quantize`` does. With ``output_qspec`` (the
    aggressive scheme) the last convolutions' outputs are quantized with it instead: the
    logits go through Q/DQ, the decoding after them stays float. Returns the nodes changed."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    outputs = {n for n in graph.nodes if n.op == "output"}

    def reaches_output(node: Any) -> bool:
        seen, todo = set(), deque(node.users)
        while todo:
            u = todo.popleft()
            if u in outputs:
                return True
            if u in seen or _is_conv(u):
                continue
            seen.add(u)
            todo.extend(u.users)
        return False

    last = [n for n in graph.nodes if _is_conv(n) and reaches_output(n)]
    region: set[Any] = set()
    todo = deque(u for n in last for u in n.users)
    while todo:
        u = todo.popleft()
        if u in region or u in outputs or _is_conv(u):
            continue
        region.add(u)
        todo.extend(u.users)
    key = "quantization_annotation"
    for n in region:
        n.meta[key] = QuantizationAnnotation(_annotated=True)
    for n in last:
        ann = n.meta.get(key)
        if ann is not None:
            ann.output_qspec = output_qspec
        elif output_qspec is not None:  # pragma: no cover - the quantizer annotates convs
            n.meta[key] = QuantizationAnnotation(output_qspec=output_qspec, _annotated=True)
    return len(region)


def prepare_qat(
    model: torch.nn.Module,
    example: torch.Tensor,
    *,
    per_channel: bool = True,
    symmetric_activations: bool = False,
    head_outputs: bool = False,
) -> torch.nn.Module:
    """Export ``model`` (eval mode) and insert fake quantization for QAT.

    The result is a ``torch.fx.GraphModule`` whose ``train()`` / ``eval()`` switch the
    exported BatchNorm behaviour; its observers are enabled (calibrate it, then
    :func:`freeze_ranges`).

    Args:
        model: The float model (not changed, and sharing nothing with the result: training
            the result leaves it as it was).
        example: An example batch (at least 2 images: the batch dimension stays dynamic).
        per_channel: Per-channel weight scales (``False``: per-tensor).
        symmetric_activations: int8 symmetric activations (TensorRT) instead of uint8.
        head_outputs: Also quantize the outputs of the head's last convolutions (the
            ``aggressive`` scheme); the decoding after them stays float either way.
    """
    ao, qpt2e, x86 = _ao()
    cfg = _config(per_channel=per_channel, symmetric_activations=symmetric_activations)

    class FloatHeadQuantizer(x86.X86InductorQuantizer):  # type: ignore[misc, name-defined]
        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            float_head(model.graph, output_qspec=cfg.output_activation if head_outputs else None)
            return model

    quantizer = FloatHeadQuantizer().set_global(cfg)
    batch = torch.export.Dim("batch", min=1, max=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a copy: the exported module would otherwise share its parameters and BatchNorm
        # buffers with ``model`` (the float teacher), and training it would move the teacher
        gm = torch.export.export(
            copy.deepcopy(model).eval(), (example,), dynamic_shapes=({0: batch},), strict=False
        ).module()
        prepared = qpt2e.prepare_qat_pt2e(gm, quantizer)
    ao.allow_exported_model_train_eval(prepared)
    prepared.eval()
    return prepared  # type: ignore[no-any-return]


def freeze_ranges(prepared: torch.nn.Module) -> None:
    """Stop the observers: the ranges found by calibration stay fixed while weights train."""
    ao, _, _ = _ao()
    prepared.apply(ao.disable_observer)


FLOAT_SHARE_MIN = 0.5
"""``keep_float="auto"``: an activation quantizer is kept in float when switching it off alone
removes at least this share of the whole model's output error."""
FLOAT_ERROR_MIN = 0.01
"""... and only when that error is material: 1 - cosine of at least this (the zoo detector's
calibrated model: 0.0004 with per-channel weights, 0.002 with the aggressive scheme; YOLOX-Nano:
0.18)."""


def _output_error(out: torch.Tensor, ref: torch.Tensor, *, task: str) -> float:
    """1 - cosine similarity of the output with the float model's: the class scores of the
    anchors the float model scores (best score at least the distillation loss's
    ``SCORE_FLOOR``) for a detector (``[B, 4 + nc, N]``), the logits for a classifier."""
    if task == "detect":
        mask = ref[:, 4:].amax(1) >= SCORE_FLOOR  # [B, N]
        if bool(mask.any()):
            a = ref[:, 4:].transpose(1, 2)[mask]
            b = out[:, 4:].transpose(1, 2)[mask]
        else:
            a, b = ref, out
    else:
        a, b = ref, out
    cos = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), 0)
    return float(1.0 - cos)


def _where(node: Any) -> str:
    """A graph node as a person finds it: the module it came from and the op (``raw.conv_3
    (conv2d)``), or the node's name."""
    op = str(getattr(node.target, "__name__", node.target)).split(".")[0]
    stack = getattr(node, "meta", {}).get("nn_module_stack") or {}
    if stack:
        path = str(list(stack.values())[-1][0])
        return f"{path} ({op})" if path else f"{node.name} ({op})"
    return str(getattr(node, "name", node))


def _activation_quantizers(prepared: torch.nn.Module) -> dict[str, Any]:
    """The activation fake-quantizers of a prepared model (those not on a weight), by name,
    with the graph nodes that call each."""
    mods = dict(prepared.named_modules())
    found: dict[str, Any] = {}
    for node in prepared.graph.nodes:  # type: ignore[union-attr]
        if node.op != "call_module" or not hasattr(mods.get(node.target), "fake_quant_enabled"):
            continue
        src = node.args[0] if node.args else None
        if getattr(src, "op", None) == "get_attr":  # a weight's quantizer
            continue
        found.setdefault(node.target, []).append(node)
    return found


@torch.no_grad()
def dominant_quantizers(
    prepared: torch.nn.Module,
    x: torch.Tensor,
    reference: torch.Tensor,
    *,
    task: str,
    share_min: float = FLOAT_SHARE_MIN,
    error_min: float = FLOAT_ERROR_MIN,
) -> list[dict[str, Any]]:
    """Activation quantizers that alone carry most of the output error (calibrated model).

    Each activation quantizer is switched off in turn (all others on) and the output error
    against the float model's ``reference`` output on ``x`` measured; a quantizer whose
    removal takes away at least ``share_min`` of the whole error is returned (largest share
    first) with its evidence: ``quantizer``, ``after`` (the op whose output it quantizes),
    ``feeds`` (the ops reading it), ``range`` (its calibrated ``[min, max]``), ``share``
    and the errors. A model whose error is spread over many layers returns none, and so does
    one whose whole error is below ``error_min`` (nothing worth a float layer).
    """
    prepared.eval()
    base = _output_error(prepared(x), reference, task=task)
    if base < error_min or base <= 0:
        return []
    mods = dict(prepared.named_modules())
    found = []
    for name, nodes in _activation_quantizers(prepared).items():
        m = mods[name]
        m.fake_quant_enabled[0] = 0
        try:
            err = _output_error(prepared(x), reference, task=task)
        finally:
            m.fake_quant_enabled[0] = 1
        share = (base - err) / base
        if share < share_min:
            continue
        obs = getattr(m, "activation_post_process", None)
        rng = [float(getattr(obs, "min_val", float("nan"))), float(getattr(obs, "max_val", 0))]
        found.append(
            {
                "quantizer": name,
                "after": sorted({_where(n.args[0]) for n in nodes}),
                "feeds": sorted({_where(u) for n in nodes for u in n.users}),
                "range": [round(v, 4) for v in rng],
                "share": round(share, 4),
                "error_all": round(base, 6),
                "error_without": round(err, 6),
            }
        )
    return sorted(found, key=lambda d: -float(d["share"]))


def keep_float(prepared: torch.nn.Module, names: list[str]) -> int:
    """Remove the named activation quantizers from a prepared model: the tensors they
    quantized stay float (no QuantizeLinear/DequantizeLinear there after export; the layers
    reading them run on float input with int8 weights). Returns the nodes removed.

    Raises:
        UsageError: A name that is not an activation quantizer of the model.
    """
    acts = _activation_quantizers(prepared)
    unknown = [n for n in names if n not in acts]
    if unknown:
        raise UsageError(
            f"not activation quantizers of this model: {', '.join(unknown)}",
            hint="the names come from a previous run's scheme record (kept_float)",
        )
    graph: Any = prepared.graph
    removed = 0
    for name in names:
        for node in acts[name]:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            removed += 1
        delattr(prepared, name)
    graph.lint()
    prepared.recompile()  # type: ignore[operator]
    return removed


def export_qdq_onnx(prepared: torch.nn.Module, out_file: Path, *, imgsz: int) -> None:
    """Convert a prepared (calibrated / trained) model and write its Q/DQ ONNX (batch 1).

    Raises:
        CheckFailed: The exporter failed.
    """
    _, qpt2e, _ = _ao()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = qpt2e.convert_pt2e(copy.deepcopy(prepared))
        x = torch.zeros(1, 3, imgsz, imgsz)
        # the exporter warns that torchvision's ops are not registered (we have none)
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                program = torch.onnx.export(
                    converted,
                    (x,),
                    dynamo=True,
                    opset_version=OPSET,
                    verbose=False,
                    input_names=["images"],
                    output_names=["output0"],
                )
                assert program is not None
                program.save(str(out_file))
        except Exception as exc:  # the exporter raises many types
            raise CheckFailed(
                f"the Q/DQ ONNX export failed: {type(exc).__name__}: {exc}"[:400],
                hint="is onnxscript installed? (pip install 'cvdeploy[compress]')",
            ) from exc


def qdq_structure(path: Path) -> dict[str, Any]:
    """What the exported graph holds: Q/DQ pairs around its convolutions, float head.

    Returns:
        ``ops`` (counts by type), ``quantize``/``dequantize`` counts, ``convs`` and
        ``convs_quantized`` (input and weight both dequantized from int8),
        ``decomposed`` (ops of a decomposed quantizer, must be empty), ``head_convs`` (the
        last convolutions), ``head_outputs_quantized`` (those whose output goes straight
        through a QuantizeLinear/DequantizeLinear pair: the aggressive scheme's quantized
        logits), ``head_qdq`` (any other Q/DQ node between the last convolutions and the
        outputs, must be 0: the decoding stays float), ``head_ops`` (the ops there).
    """
    import onnx

    g = onnx.load(str(path)).graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    ops = Counter(n.op_type for n in g.node)
    convs = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")]

    def dq(name: str) -> bool:
        p = producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    quantized = [c for c in convs if dq(c.input[0]) and len(c.input) > 1 and dq(c.input[1])]
    # the head: from each conv whose output reaches a graph output without another conv
    outputs = {o.name for o in g.output}

    def reaches_output_without_conv(n: Any) -> bool:
        seen, todo = set(), deque(n.output)
        while todo:
            t = todo.popleft()
            if t in outputs:
                return True
            for c in consumers.get(t, []):
                if c.op_type in ("Conv", "Gemm", "MatMul") or id(c) in seen:
                    continue
                seen.add(id(c))
                todo.extend(c.output)
        return False

    last = [c for c in convs if reaches_output_without_conv(c)]
    head_nodes: dict[int, Any] = {}
    todo = deque(t for c in last for t in c.output)
    while todo:
        t = todo.popleft()
        for c in consumers.get(t, []):
            if c.op_type in ("Conv", "Gemm", "MatMul") or id(c) in head_nodes:
                continue
            head_nodes[id(c)] = c
            todo.extend(c.output)
    # the aggressive scheme: a QuantizeLinear -> DequantizeLinear pair right on a last
    # convolution's output (its logits quantized); any other Q/DQ in the head is an error
    on_logits: set[int] = set()
    for c in last:
        qs = [q for q in consumers.get(c.output[0], []) if q.op_type == "QuantizeLinear"]
        dqs = [d for q in qs for d in consumers.get(q.output[0], [])]
        if len(qs) == 1 and dqs and all(d.op_type == "DequantizeLinear" for d in dqs):
            on_logits.update(id(n) for n in (*qs, *dqs))
    logits_quantized = sum(
        1 for c in last for q in consumers.get(c.output[0], []) if id(q) in on_logits
    )
    head_ops = Counter(n.op_type for n in head_nodes.values())
    return {
        "ops": dict(ops),
        "quantize": ops.get("QuantizeLinear", 0),
        "dequantize": ops.get("DequantizeLinear", 0),
        "convs": len(convs),
        "convs_quantized": len(quantized),
        "decomposed": {k: ops[k] for k in DECOMPOSED_OPS if ops.get(k)},
        "head_convs": len(last),
        "head_outputs_quantized": logits_quantized,
        "head_qdq": sum(
            1
            for k, n in head_nodes.items()
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and k not in on_logits
        ),
        "head_ops": dict(head_ops),
    }
