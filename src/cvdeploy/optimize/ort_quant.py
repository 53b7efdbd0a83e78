"""ONNX Runtime static quantization to a Q/DQ graph (also the input of TensorRT INT8).

``quant_pre_process`` (shape inference + graph cleanup) runs first, then ``quantize_static``
with ``QuantFormat.QDQ``, calibrated by a :class:`CalibrationDataReader` that feeds images
through the bundle spec's preprocessing. The decoding arithmetic of the detection head is
found by graph analysis (:func:`float_head_nodes`) and kept in float.

For ``--max-drop``, :func:`sensitivity_ranking` measures, per Conv/Gemm/MatMul node, how much
quantization noise it adds (signal-to-quantization-noise ratio of its output against the
float model's, minus that of its inputs; ONNX Runtime's ``qdq_loss_debug`` collects the
activations), so the most sensitive nodes can be kept in float first.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cvdeploy.errors import BackendUnavailable, CheckFailed, ModelLoadError, UsageError
from cvdeploy.optimize.backend import (
    NNCF_ENGINE_HINT,
    QuantizeContext,
    QuantizedModel,
    candidate_predictor,
    match_patterns,
)

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Ops that end a head branch when walking back from the outputs (their inputs are features)."""
SEARCH_STEPS = 6
"""Search steps of the ``--max-drop`` loop (1, 2, 4, ... sensitive nodes in float)."""
_PASS_THROUGH = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")
ELEMENTWISE_OPS = (
    "Add", "Sub", "Mul", "Div", "Sigmoid", "Relu", "Clip", "LeakyRelu", "HardSigmoid",
    "HardSwish", "Tanh", "Elu", "Selu", "PRelu",
)  # fmt: skip
"""Ops between a layer and the next (activations, residual sums): a layer kept in float reads
its input as these compute it from the producing layers' outputs, without re-quantization."""


def _import_quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendUnavailable(
            "ONNX Runtime quantization is unavailable: onnxruntime is not installed",
            hint="pip install cvdeploy[onnxruntime]",
        ) from exc
    return quantization


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name (``<op>_<index>``); quantizers select by name."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model


def float_head_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the detection head's decoding nodes, which must stay in float.

    Walks back from every graph output through the nodes that are not Conv/Gemm/MatMul
    (box decoding, DFL softmax, sigmoid, reshapes and the concatenations after them). A
    Conv whose input comes from a Softmax (YOLOv8's DFL expectation, a fixed 1x1 conv) is
    part of the decoding and is kept in float as well.

    Args:
        model: The ONNX model (its nodes named, see :func:`name_nodes`).

    Returns:
        Node names in graph order.
    """
    producer: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        for out in node.output:
            producer[out] = node

    def fed_by_softmax(node: onnx.NodeProto) -> bool:
        cur = producer.get(node.input[0]) if node.input else None
        while cur is not None and cur.op_type in _PASS_THROUGH:
            cur = producer.get(cur.input[0]) if cur.input else None
        return cur is not None and cur.op_type == "Softmax"

    keep: set[str] = set()
    stack = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        node = producer.get(tensor)
        if node is None:
            continue
        if node.op_type in COMPUTE_OPS and not fed_by_softmax(node):
            continue
        keep.add(node.name)
        stack.extend(i for i in node.input if i)
    return [n.name for n in model.graph.node if n.name in keep]


def compute_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes (the ones that matter for INT8 speed)."""
    return [n.name for n in model.graph.node if n.op_type in COMPUTE_OPS]


def pre_process(src: Path, dst: Path) -> onnx.ModelProto:
    """Run ONNX Runtime's ``quant_pre_process`` and name the nodes; write the result to ``dst``.

    The model is also brought to opset 13 when older (per-channel Q/DQ needs the ``axis``
    attribute of opset 13).

    Raises:
        ModelLoadError: The model cannot be read or pre-processed.
    """
    q = _import_quantization()
    try:
        model = onnx.load(str(src))
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        if opset < 13:
            from onnx import version_converter

            model = version_converter.convert_version(model, 13)
        with tempfile.TemporaryDirectory(prefix="cvdeploy-preq-") as tmp:
            up = Path(tmp) / "in.onnx"
            onnx.save(model, str(up))
            q.shape_inference.quant_pre_process(str(up), str(dst), skip_symbolic_shape=False)
        out = name_nodes(onnx.load(str(dst)))
    except (OSError, ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(
            f"could not prepare {src.name} for quantization: {exc}".splitlines()[0],
            hint="check that the FP32 artifact is a valid ONNX model (`cvdeploy info`)",
        ) from exc
    onnx.save(out, str(dst))
    return out


def make_reader(batches: Iterable[np.ndarray], input_name: str) -> Any:
    """A ``CalibrationDataReader`` over preprocessed input batches (consumed once)."""
    q = _import_quantization()

    class _Reader(q.CalibrationDataReader):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    return _Reader()


@dataclass(frozen=True, slots=True)
class OrtQuantOptions:
    """Options of one ``quantize_static`` call.

    Attributes:
        method: ``minmax``, ``entropy`` or ``percentile``.
        per_channel: Per-channel weight scales.
        symmetric: Signed, symmetric activations and weights (zero point 0), as TensorRT
            explicit quantization requires; otherwise uint8 asymmetric activations.
        exclude: Node names kept in float.
        float_inputs: Nodes (kept in float) whose inputs are made float too, back to the
            layers that produced them (see :func:`unquantize_inputs`); ``quantize_static`` only.
        engine: ``ort`` (``quantize_static``) or ``nncf`` (NNCF's ONNX backend).
        reduce_range: 7-bit weights: ONNX Runtime's U8S8 convolutions on
            x86 CPUs without VNNI use ``VPMADDUBSW``, whose int16 sums saturate with full
            8-bit ranges (see :func:`needs_reduce_range`).
    """

    method: str = "minmax"
    per_channel: bool = True
    symmetric: bool = False
    exclude: tuple[str, ...] = ()
    float_inputs: tuple[str, ...] = ()
    reduce_range: bool = False
    engine: str = "ort"

    def record(self) -> dict[str, Any]:
        """Provenance options."""
        if self.engine == "nncf":
            return {
                "engine": "nncf (ONNX backend)",
                "method": self.method,
                "per_channel": self.per_channel,
                "activations": "uint8-asymmetric (NNCF MIXED preset)",
                "weights": "int8-symmetric",
                "quant_format": "QDQ",
            }
        return {
            "engine": "onnxruntime quantize_static",
            "method": self.method,
            "per_channel": self.per_channel,
            "activations": "int8-symmetric" if self.symmetric else "uint8-asymmetric",
            "weights": "int8-symmetric",
            "quant_format": "QDQ",
            "reduce_range": self.reduce_range,
            **(
                {"kept_float_inputs": "float back to the producing layers (no Q/DQ)"}
                if self.float_inputs
                else {}
            ),
        }


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""x86 instructions with an int32-accumulating u8 x s8 dot product (no saturation)."""


def needs_reduce_range(cpu: dict[str, Any], *, symmetric: bool) -> bool:
    """Whether ONNX Runtime U8S8 INT8 would saturate on this CPU (so 7-bit weights are used).

    On x86 without VNNI/AMX, ONNX Runtime computes uint8 x int8 convolutions with
    ``VPMADDUBSW``, which adds two u8 x s8 products into a saturating int16: full-range
    weights and activations overflow it and the outputs are silently clipped (ONNX Runtime's
    quantization documentation recommends ``reduce_range`` there). The symmetric (TensorRT)
    graph is int8 x int8 and is built for a GPU, so it is never reduced.

    Args:
        cpu: The environment fingerprint's ``cpu`` entry (``arch``, ``flags``).
        symmetric: The symmetric int8/int8 (TensorRT) variant.
    """
    if symmetric:
        return False
    arch = str(cpu.get("arch", "")).lower()
    if arch not in ("x86_64", "amd64", "i686", "x86"):
        return False
    flags = set(cpu.get("flags") or ())
    return not flags & set(VNNI_FLAGS)


def quantize_qdq(
    prepared: Path, out: Path, batches: Iterable[np.ndarray], *, options: OrtQuantOptions
) -> Path:
    """Quantize a pre-processed model to a Q/DQ graph with ``quantize_static``.

    Args:
        prepared: Output of :func:`pre_process`.
        out: Where the Q/DQ model goes.
        batches: Preprocessed calibration inputs.
        options: Quantization options.

    Returns:
        ``out``.
    """
    q = _import_quantization()
    methods = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }
    if options.method not in methods:
        raise UsageError(f"unknown calibration method {options.method!r}")
    model = onnx.load(str(prepared))
    input_name = model.graph.input[0].name
    extra: dict[str, Any] = {"WeightSymmetric": True}
    if options.symmetric:
        extra["ActivationSymmetric"] = True
    if options.method == "percentile":
        extra["CalibPercentile"] = 99.999
    with tempfile.TemporaryDirectory(prefix="cvdeploy-ortq-") as tmp:
        extra["CalibTensorRangeSymmetric"] = options.symmetric
        try:
            q.quantize_static(
                str(prepared),
                str(out),
                make_reader(batches, input_name),
                quant_format=q.QuantFormat.QDQ,
                per_channel=options.per_channel,
                activation_type=q.QuantType.QInt8 if options.symmetric else q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                nodes_to_exclude=list(options.exclude),
                calibrate_method=methods[options.method],
                reduce_range=options.reduce_range,
                extra_options={**extra, "CalibIntermediateModelPath": tmp},
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"ONNX Runtime quantization failed: {exc}".splitlines()[0],
                hint="try --method minmax, or --keep-float for the node named in the error",
            ) from exc
    if options.float_inputs:
        qdq = onnx.load(str(out))
        unquantize_inputs(qdq, options.float_inputs, reference=model)
        onnx.save(qdq, str(out))
    return out


def unquantize_inputs(
    model: onnx.ModelProto, nodes: Iterable[str], *, reference: onnx.ModelProto | None = None
) -> list[str]:
    """Take the Q/DQ pairs off the inputs of ``nodes``, back to the layers that made them.

    ``quantize_static``'s ``nodes_to_exclude`` keeps a node's own weights and arithmetic in
    float, but its input stays quantized whenever the op producing that tensor is quantized
    (ONNX Runtime quantizes an op's output for the op's sake), and so do the inputs of the
    activation in between: a SiLU is ``Mul(x, Sigmoid(x))`` with ``x``, the sigmoid and the
    product each quantized per tensor. On YOLOX-Nano that makes ``--keep-float`` inert: the
    first depthwise convolution's input has channels whose range is under a hundredth of the
    largest one's (NNCF's per-channel scales for it span 0.0008 to 0.54), which a
    per-tensor scale rounds to zero whether or not the convolution itself is in float.

    Each input of a kept node that is ``DequantizeLinear(QuantizeLinear(t))`` is rewired to
    ``t``; through the elementwise ops in between (:data:`ELEMENTWISE_OPS`), their inputs are
    made float the same way, up to the producing layers (convolutions, concatenations...),
    whose outputs are computed as before. Those elementwise ops then compute in float too.
    The Q/DQ pairs nobody reads any more are removed with their scales and zero points (not
    in a graph with subgraphs, which read outer tensors implicitly). Quantized weights
    (``DequantizeLinear`` of an initializer) are not touched.

    ``quantize_static`` removes a ReLU or Clip that follows a quantized op and lets the Q/DQ
    range do the clamping (the convolution's output takes the ReLU's tensor name); the pair
    then carries the activation. With ``reference`` (the model that was quantized), an input
    is rewired only when its float tensor is made by the same op as there; a pair that stands
    for a removed ReLU or Clip is replaced by that activation, computed in float (a copy of
    the reference's node, its bounds copied too), and any other pair whose float tensor
    cannot be matched with the reference stays.

    Args:
        model: A Q/DQ model (changed in place).
        nodes: Names of the nodes kept in float.
        reference: The float model ``model`` was quantized from.

    Returns:
        The tensors now read in float, in the order they were freed.
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name for i in g.initializer}

    def behind_qdq(t: str) -> str | None:
        dq = producer.get(t)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
            return None
        q = producer.get(dq.input[0])
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None

    made_by = (
        {o: n.name for n in reference.graph.node for o in n.output}
        if reference is not None
        else None
    )

    def same_as_before(t: str) -> bool:
        # the float tensor must come from the op that made it in the reference (a removed
        # ReLU's output name is reused for the convolution's raw output)
        if made_by is None:
            return True
        now = producer.get(t)
        return made_by.get(t) == (now.name if now is not None else None)

    ref_nodes = {n.name: n for n in reference.graph.node} if reference is not None else {}
    ref_inits = {i.name: i for i in reference.graph.initializer} if reference else {}
    restored: dict[str, str] = {}

    def restore_activation(t: str, before: onnx.NodeProto) -> str | None:
        """The folded ReLU/Clip that made ``t`` in the reference, re-made in float."""
        if t in restored:
            return restored[t]
        act = ref_nodes.get((made_by or {}).get(t, ""))
        now = producer.get(t)
        if (
            act is None
            or act.op_type not in ("Relu", "Clip")
            or now is None
            or (made_by or {}).get(act.input[0]) != now.name
            or any(b and b not in ref_inits for b in act.input[1:])
        ):
            return None
        for b in act.input[1:]:
            if b and b not in inits:
                g.initializer.append(ref_inits[b])
                inits.add(b)
        copy = onnx.NodeProto()
        copy.CopyFrom(act)
        copy.name, out = f"{act.name}_float", f"{t}_float"
        copy.input[0] = t
        del copy.output[:]
        copy.output.append(out)
        at = next(i for i, n in enumerate(g.node) if n.name == before.name)
        g.node.insert(at, copy)
        producer[out] = copy
        restored[t] = out
        return out

    wanted = set(nodes)
    stack = [n for n in g.node if n.name in wanted]
    seen: set[str] = set()
    freed: list[str] = []
    bypassed: list[onnx.NodeProto] = []
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        for k, t in enumerate(node.input):
            if not t or t in inits:
                continue
            f = behind_qdq(t)
            if f is not None and not same_as_before(f):
                f = restore_activation(f, node)  # the pair stood for a folded ReLU/Clip
                if f is None:
                    continue
            if f is not None:
                bypassed.append(producer[t])  # the DequantizeLinear now skipped
                node.input[k] = f
                freed.append(f)
                t = f
            p = producer.get(t)
            if p is not None and p.op_type in ELEMENTWISE_OPS:
                stack.append(p)
    _drop_unread(model, bypassed, producer)
    return list(dict.fromkeys(freed))


def _drop_unread(
    model: onnx.ModelProto, bypassed: list[onnx.NodeProto], producer: dict[str, onnx.NodeProto]
) -> None:
    """Remove the bypassed DequantizeLinear nodes nobody reads any more, the QuantizeLinear
    in front of each when nobody else reads it, and the constants only they used."""
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in g.node for a in n.attribute):  # fmt: skip
        return  # subgraphs read outer tensors implicitly: leave the unused pairs in place
    keep = {o.name for o in g.output} | {i.name for i in g.input}
    candidates = list({id(n): n for n in bypassed}.values())
    dropped: list[onnx.NodeProto] = []
    while candidates:
        read = {i for n in g.node for i in n.input} | keep
        dead = [n for n in candidates if not any(o in read for o in n.output)]
        if not dead:
            break
        nxt: list[onnx.NodeProto] = []
        for n in dead:
            g.node.remove(n)
            dropped.append(n)
            q = producer.get(n.input[0])
            if q is not None and q.op_type == "QuantizeLinear" and q in g.node:
                nxt.append(q)
        candidates = [n for n in candidates if n not in dead] + nxt
    read = {i for n in g.node for i in n.input} | keep
    consts = {i for n in dropped for i in n.input[1:]}
    for init in [i for i in g.initializer if i.name in consts and i.name not in read]:
        g.initializer.remove(init)


def quantize_qdq_nncf(
    prepared: Path, out: Path, batches: Iterable[np.ndarray], *, options: OrtQuantOptions
) -> Path:
    """Quantize a pre-processed model to a Q/DQ graph with NNCF's ONNX backend.

    The same contract as :func:`quantize_qdq` (the result runs on ONNX Runtime), written by
    ``nncf.quantize``: MIXED preset (symmetric int8 weights, asymmetric activations), bias
    correction, the calibration method's range estimator, ``options.exclude`` as the ignored
    scope.

    Args:
        prepared: Output of :func:`pre_process`.
        out: Where the Q/DQ model goes.
        batches: Preprocessed calibration inputs.
        options: Quantization options (``symmetric`` and ``reduce_range`` do not apply).
    """
    from cvdeploy.optimize.nncf_quant import NncfOptions, nncf_quantize_kwargs

    try:
        import nncf
    except ImportError as exc:
        raise UsageError(
            "the nncf engine needs NNCF", hint="pip install 'cvdeploy[openvino]'"
        ) from exc
    model = onnx.load(str(prepared))
    input_name = model.graph.input[0].name
    data = [{input_name: x} for x in batches]
    kwargs = nncf_quantize_kwargs(
        NncfOptions(
            method=options.method, per_channel=options.per_channel, ignored=options.exclude
        ),
        len(data),
    )
    try:
        quantized = nncf.quantize(model, nncf.Dataset(data), **kwargs)
    except Exception as exc:  # NNCF raises many types; the message names the node
        raise ModelLoadError(
            f"NNCF quantization failed: {exc}".splitlines()[0],
            hint="try --engine ort, or --keep-float for the node named in the error",
        ) from exc
    onnx.save(quantized, str(out))
    return out


def sensitivity_ranking(
    prepared: Path, qdq: Path, batches: Sequence[np.ndarray]
) -> list[tuple[str, float]]:
    """Rank Conv/Gemm/MatMul nodes by the quantization noise they add, worst first.

    For every node the signal-to-quantization-noise ratio (dB) of its output in the Q/DQ
    model against the float model is compared with that of its activation input; the drop
    is the node's sensitivity.

    Args:
        prepared: The float model (pre-processed, named nodes).
        qdq: Its Q/DQ quantization.
        batches: A few preprocessed inputs.

    Returns:
        ``(node name, SQNR drop in dB)``, largest drop first.
    """
    q = _import_quantization()
    from onnxruntime.quantization import qdq_loss_debug as dbg

    model = onnx.load(str(prepared))
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="cvdeploy-sens-") as tmp:
        f_aug, q_aug = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        dbg.modify_model_output_intermediate_tensors(str(prepared), str(f_aug))
        dbg.modify_model_output_intermediate_tensors(str(qdq), str(q_aug))
        f_acts = dbg.collect_activations(str(f_aug), make_reader(batches, input_name))
        q_acts = dbg.collect_activations(str(q_aug), make_reader(batches, input_name))
    del q
    matched = dbg.create_activation_matching(q_acts, f_acts)
    errors = dbg.compute_activation_error(matched)
    sqnr = {k: float(v.get("xmodel_err", math.inf)) for k, v in errors.items()}
    producer = {o: n for n in model.graph.node for o in n.output}
    ranking = []
    for node in model.graph.node:
        if node.op_type not in COMPUTE_OPS or not node.output:
            continue
        out = sqnr.get(node.output[0])
        if out is None or not math.isfinite(out):
            continue
        ins = [sqnr[i] for i in node.input[:1] if i in sqnr and i in producer]
        before = min(ins) if ins and math.isfinite(min(ins)) else max(out, 60.0)
        ranking.append((node.name, before - out))
    ranking.sort(key=lambda t: -t[1])
    return ranking


def quantize_dynamic_model(src: Path, out: Path) -> Path:
    """Dynamic INT8 (``ConvInteger``/``MatMulInteger``), for comparison and diagnosis only."""
    q = _import_quantization()
    q.quantize_dynamic(str(src), str(out), weight_type=q.QuantType.QUInt8)
    return out


def _budget_failure(
    max_drop: float, fp32_map: float, tried: list[dict[str, Any]], *, nncf_hint: bool = False
) -> CheckFailed:
    best = min(tried, key=lambda t: t["drop"])
    return CheckFailed(
        f"could not meet the budget of {max_drop:.4f} mAP50-95 (FP32 {fp32_map:.4f}); best "
        f"found: drop {best['drop']:.4f} (mAP50-95 {best['map50_95']:.4f}) with "
        f"{len(best['float_nodes'])} sensitive node(s) kept in float "
        f"({', '.join(best['float_nodes'][:6]) or 'none'}); nothing was saved",
        hint="allow a larger --max-drop, calibrate on more images, or try --method "
        "entropy/percentile or --backend openvino"
        + (f"; or {NNCF_ENGINE_HINT}" if nncf_hint else ""),
    )


def quantize_onnxruntime(ctx: QuantizeContext) -> tuple[QuantizedModel, dict[str, Any] | None]:
    """The ONNX Runtime / TensorRT backend of :func:`cvdeploy.optimize.quantize.quantize_bundle`.

    Writes ``model.onnx`` (Q/DQ) to ``tmp/out``. With ``opts.max_drop``: quantizes, and
    while the mAP drop exceeds the budget, keeps the most sensitive Conv/Gemm/MatMul nodes
    (see :func:`sensitivity_ranking`) in float, doubling their number each step.

    Returns:
        The :class:`~cvdeploy.optimize.quantize.QuantizedModel` and the budget record.

    Raises:
        CheckFailed: The budget could not be met ("could not meet the budget; best found").
    """
    bundle, source, cal, src_pred = ctx.bundle, ctx.source, ctx.calibration, ctx.source_predictor
    evalset, fp32_map, opts, tmp, say = ctx.evalset, ctx.fp32_map, ctx.options, ctx.workdir, ctx.log
    from cvdeploy.optimize.calibration import predictor_map, preprocessed
    from cvdeploy.progress import track

    prepared = tmp / "prepared.onnx"
    say(f"preparing {source.id} (quant_pre_process)")
    model = pre_process(bundle.model_file(source), prepared)
    names = [n.name for n in model.graph.node]
    head = float_head_nodes(model)
    user = match_patterns(names, opts.keep_float)
    symmetric = opts.backend == "tensorrt"
    from cvdeploy.environment import fingerprint

    engine: str = opts.engine
    reduce_range = engine == "ort" and needs_reduce_range(
        fingerprint().get("cpu", {}), symmetric=symmetric
    )
    if reduce_range:
        say(
            "this CPU has no VNNI/AMX: 7-bit weights (reduce_range) so that ONNX Runtime's "
            "U8S8 kernels do not saturate"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    out_dir = tmp / "out"
    out_dir.mkdir()

    def run(extra: Sequence[str], dst: Path) -> QuantizedModel:
        exclude = tuple(dict.fromkeys([*head, *user, *extra]))
        qo = OrtQuantOptions(
            method=opts.method,
            per_channel=opts.per_channel,
            symmetric=symmetric,
            exclude=exclude,
            float_inputs=tuple(dict.fromkeys([*user, *extra])) if engine == "ort" else (),
            reduce_range=reduce_range,
            engine=engine,
        )
        batches = track(
            preprocessed(src_pred, cal.paths),
            total=cal.count,
            description=f"calibrating ({opts.method}, {engine})",
            enabled=opts.progress,
        )
        quantizer = quantize_qdq_nncf if engine == "nncf" else quantize_qdq
        quantizer(prepared, dst / "model.onnx", batches, options=qo)
        facts = {
            **qo.record(),
            "head_float": head,
            "quant_pre_process": True,
            "opset": opset,
        }
        if symmetric:
            facts["tensorrt"] = (
                "explicit-quantization Q/DQ graph: build the INT8 engine with "
                "`cvdeploy export BUNDLE --format tensorrt:int8` on a machine with a GPU"
            )
        return QuantizedModel(
            directory=dst,
            main_file="model.onnx",
            format="onnx",
            io=source.io,
            kept_float=[*user, *extra],
            facts=facts,
        )

    cand = run((), out_dir)
    if opts.max_drop is None or evalset is None or fp32_map is None:
        return cand, None
    tried: list[dict[str, Any]] = []

    def score(c: QuantizedModel, extra: Sequence[str]) -> float:
        with candidate_predictor(bundle, c, "candidate") as p:
            m = predictor_map(p, evalset)
        tried.append({"float_nodes": list(extra), "map50_95": m, "drop": fp32_map - m})
        say(f"  {len(extra)} node(s) in float: mAP50-95 {m:.4f} (drop {fp32_map - m:.4f})")
        return m

    m = score(cand, ())
    if fp32_map - m <= opts.max_drop:
        return cand, {
            "max_drop": opts.max_drop,
            "fp32_map50_95": fp32_map,
            "met": True,
            "tried": tried,
        }
    say("ranking nodes by sensitivity (layer-wise SQNR against FP32)")
    probe = [x for _, x in zip(range(8), preprocessed(src_pred, cal.paths), strict=False)]
    ranking = sensitivity_ranking(prepared, out_dir / "model.onnx", probe)
    producer = {o: n for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}

    def group(name: str) -> list[str]:
        # a node and the non-compute op feeding it: excluding only the conv would leave its
        # input tensor quantized for the producer's sake
        node = by_name[name]
        prev = producer.get(node.input[0]) if node.input else None
        if prev is not None and prev.op_type not in COMPUTE_OPS:
            return [name, prev.name]
        return [name]

    k = 1
    for step in range(SEARCH_STEPS):
        extra = list(dict.fromkeys(x for n, _ in ranking[:k] for x in group(n)))
        d = tmp / f"try{step}"
        d.mkdir()
        c = run(extra, d)
        m = score(c, extra)
        if fp32_map - m <= opts.max_drop:
            return c, {
                "max_drop": opts.max_drop,
                "fp32_map50_95": fp32_map,
                "met": True,
                "tried": tried,
                "ranking": ranking[:32],
            }
        if k >= len(ranking):
            break
        k = min(2 * k, len(ranking))
    raise _budget_failure(
        opts.max_drop, fp32_map, tried, nncf_hint=opts.backend == "onnxruntime" and engine == "ort"
    )
