"""Intermediate outputs of ONNX and OpenVINO artifacts ("taps"), in memory.

A :class:`TappedModel` marks the output of every compute layer (convolution, matrix
product; for a layer followed by its bias addition, the sum) as an extra model output, so
one inference returns every layer's activation. Nothing is written to disk (encrypted
artifacts are decrypted in memory by the bundle's loader), and the model computes in the
artifact's recorded inference precision, pinned the same way the runners pin it
(:func:`cvdeploy.runtime.onnxruntime.session_options`,
:func:`cvdeploy.runtime.openvino.compile_config`).

Each tapped layer is a :class:`TapPoint` with the names it answers to (tensor and node
names), so the layers of an INT8 artifact are matched with those of the float model it
was made from: NNCF keeps OpenVINO operation names, ONNX Runtime's Q/DQ keeps tensor
names, and OpenVINO's converter keeps the ONNX tensor names on its outputs.

Marking a tensor as an output can keep a runtime from fusing it away (as with Polygraphy's
``--onnx-outputs mark all``): the activations are those of the unfused graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.errors import ModelLoadError, UsageError

TAP_FORMATS = ("onnx", "openvino")
_ONNX_COMPUTE = {
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
}
_ONNX_FOLLOW = {"Cast", "Mul", "Add", "DequantizeLinear"}
_OV_COMPUTE = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"}
_ONNX_QUANT_PASS = {"DequantizeLinear", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"}
_OV_QUANT_PASS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Convert"}
"""Ops between a quantizer and the layer reading its output that only move values."""


@dataclass(frozen=True, slots=True)
class TapPoint:
    """One tapped layer.

    Attributes:
        key: The layer's name: the ONNX node name, or the OpenVINO operation's friendly
            name (the names ``cvdeploy quantize --keep-float`` matches).
        op_type: ``Conv``, ``Convolution``, ``MatMul``...
        names: Tensor and node names the layer answers to (for matching across artifacts).
        inputs: Keys of the nearest tapped layers upstream (empty for the first layers).
        order: Position in topological order.
        quantizer: The quantizer of the layer's input activation (an INT8 artifact's
            OpenVINO ``FakeQuantize`` or ONNX ``QuantizeLinear``), by name; ``None``: the
            input is not quantized (or not by one quantizer). One quantizer often feeds
            several layers (a tensor read by several branches): a fault in its scale shows
            in all of them alike.
    """

    key: str
    op_type: str
    names: frozenset[str]
    inputs: tuple[str, ...]
    order: int
    quantizer: str | None = None


def tappable(art: Artifact) -> bool:
    """Whether layer outputs of this artifact can be tapped."""
    return art.format in TAP_FORMATS


class TappedModel:
    """An artifact with its layer outputs exposed. Use as a context manager.

    Args:
        bundle: The bundle (its loader decrypts encrypted artifacts in memory).
        artifact: The artifact (ONNX or OpenVINO).
        only: Keys of the layers to expose (default: every compute layer).
        threads: Runtime threads.
    """

    def __init__(
        self,
        bundle: Bundle,
        artifact: Artifact | str,
        *,
        only: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.artifact = bundle.artifact(artifact) if isinstance(artifact, str) else artifact
        if not tappable(self.artifact):
            raise UsageError(
                f"artifact {self.artifact.id} is {self.artifact.format}: layer outputs can be "
                f"compared for {', '.join(TAP_FORMATS)} artifacts only",
                hint="compare an onnx or openvino artifact of the bundle",
            )
        self._bundle = bundle
        self._threads = threads
        files = bundle.model_files(self.artifact)
        self._files = files
        self._impl: _OnnxImpl | _OvImpl
        if self.artifact.format == "onnx":
            self.points, self._impl = _onnx_points(files.model_bytes or files.path.read_bytes())
        else:
            self.points, self._impl = _ov_points(files)
        if only is not None:
            want = set(only)
            self.points = [p for p in self.points if p.key in want]
        self._by_key = {p.key: p for p in self.points}
        self._session: Any = None
        self._isolated: Any = None
        self._shapes: dict[str, tuple[int, ...]] = {}

    def __enter__(self) -> TappedModel:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self) -> None:
        """Build the runtime session with the taps (idempotent)."""
        if self._session is not None:
            return
        keys = [p.key for p in self.points]
        self._session = self._impl.build(keys, self._threads, self.artifact.runtime_precision)

    def close(self) -> None:
        """Release the sessions."""
        self._session = None
        self._isolated = None

    def run_fed(
        self, xs: Sequence[np.ndarray], feeds: Sequence[dict[str, np.ndarray]]
    ) -> list[list[np.ndarray]]:
        """The model's own outputs, per input, with the layers of the feeds replaced by the
        given values (everything else computed as usual): how much does one layer's error
        matter at the end? Every feed must name the same layers (one session for them)."""
        if not feeds:
            return []
        key = tuple(sorted(feeds[0]))
        session = self._impl.build(
            [], self._threads, self.artifact.runtime_precision, cut=list(key)
        )
        return [[np.asarray(o) for o in session(x, f)[0]] for x, f in zip(xs, feeds, strict=True)]

    def run_isolated(self, x: np.ndarray, fed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every exposed layer's output when each layer is fed, instead of what the layers
        before it computed, the activations in ``fed`` (by layer key; the float source's):
        the error a layer shows then is its own, not what it inherited.

        Layers missing from ``fed``, and the model's own outputs, are not cut.
        """
        if self._isolated is None:
            keys = [p.key for p in self.points]
            cut = [k for k in keys if k in fed]
            self._isolated = (
                self._impl.build(keys, self._threads, self.artifact.runtime_precision, cut=cut),
                cut,
            )
        session, cut = self._isolated
        _, taps = session(x, {k: fed[k] for k in cut})
        return {k: np.asarray(v, dtype=np.float32) for k, v in taps.items()}

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One inference: every exposed layer's output (float32), by layer key."""
        return self.run_all(x)[1]

    def run_all(self, x: np.ndarray) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """One inference: the model's own outputs (in order) and the exposed layers'."""
        self.load()
        outs, taps = self._session(x, {})
        return [np.asarray(o) for o in outs], {
            k: np.asarray(v, dtype=np.float32) for k, v in taps.items()
        }

    def shapes(self, x: np.ndarray) -> dict[str, tuple[int, ...]]:
        """The output shape of every exposed layer for an input like ``x``."""
        if not self._shapes:
            self._shapes = {k: tuple(v.shape) for k, v in self.run(x).items()}
        return self._shapes


def match_points(
    source: Sequence[TapPoint], candidate: Sequence[TapPoint]
) -> list[tuple[str, str]]:
    """``(source key, candidate key)`` of the layers found in both, in the candidate's order."""
    by_name: dict[str, str] = {}
    for p in source:
        for n in p.names:
            by_name.setdefault(n, p.key)
    out: list[tuple[str, str]] = []
    used: set[str] = set()
    for c in sorted(candidate, key=lambda p: p.order):
        hits = [by_name[n] for n in sorted(c.names) if n in by_name]
        if c.key in by_name:
            hits.insert(0, by_name[c.key])
        for h in hits:
            if h not in used:
                used.add(h)
                out.append((h, c.key))
                break
    return out


def embedding_point(points: Sequence[TapPoint], shapes: dict[str, tuple[int, ...]]) -> TapPoint:
    """The layer whose pooled output serves as the model's embedding.

    A network ending in fully connected layers (a classifier) gives the output of its
    second-to-last one; otherwise the convolution output with the smallest spatial size
    and, among those, the most channels (the backbone's deepest features, before the
    narrower head branches), the first such in topological order.

    Raises:
        UsageError: No layer output qualifies.
    """
    flat = [p for p in points if len(shapes.get(p.key, ())) == 2]
    if len(flat) >= 2:
        return sorted(flat, key=lambda p: p.order)[-2]
    maps = [p for p in points if len(shapes.get(p.key, ())) == 4]
    if not maps:
        if flat:
            return flat[0]
        raise UsageError("no layer output of the model can serve as an embedding")

    def area(p: TapPoint) -> int:  # NCHW (ONNX and OpenVINO layer outputs)
        s = shapes[p.key]
        return int(s[2] * s[3])

    def channels(p: TapPoint) -> int:
        s = shapes[p.key]
        return int(s[1])

    smallest = min(area(p) for p in maps)
    cands = [p for p in maps if area(p) == smallest]
    most = max(channels(p) for p in cands)
    return min((p for p in cands if channels(p) == most), key=lambda p: p.order)


def pool(a: np.ndarray) -> np.ndarray:
    """``(B, C, H, W)`` -> ``(B, C)`` global average; ``(B, C)`` unchanged."""
    if a.ndim == 4:
        return np.asarray(a.mean(axis=(2, 3)), dtype=np.float32)
    return np.asarray(a.reshape(a.shape[0], -1), dtype=np.float32)


# ONNX -------------------------------------------------------------------------------------------
class _OnnxImpl:
    def __init__(self, model: Any, tensor_of: dict[str, str], elem: dict[str, int]) -> None:
        self.model = model
        self.tensor_of = tensor_of
        self.elem = elem

    def build(
        self, keys: list[str], threads: int | None, precision: str, cut: Sequence[str] = ()
    ) -> Any:
        import onnx
        import onnxruntime as ort

        from cvdeploy.runtime.onnxruntime import session_options

        if precision != "f32":
            raise UsageError(f"ONNX Runtime computes in f32 only, not {precision}")
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        own = [o.name for o in model.graph.output]
        have = set(own)
        fed: dict[str, str] = {}  # layer key -> graph input now holding its tensor
        renamed: dict[str, str] = {}
        for k in cut:
            t = self.tensor_of[k]
            if t in have:  # a model output: left as it is
                continue
            new = f"{t}__cvdeploy_computed"
            for n in model.graph.node:
                for j, o in enumerate(n.output):
                    if o == t:
                        n.output[j] = new
            model.graph.input.append(
                onnx.helper.make_tensor_value_info(
                    t, self.elem.get(t, onnx.TensorProto.FLOAT), None
                )
            )
            fed[k], renamed[k] = t, new
        tensors = [renamed.get(k, self.tensor_of[k]) for k in keys]
        for t in tensors:
            if t not in have:
                model.graph.output.append(onnx.ValueInfoProto(name=t))
                have.add(t)
        for vi in list(model.graph.value_info):  # stale shapes of renamed tensors
            if vi.name in fed.values():
                model.graph.value_info.remove(vi)
        try:
            sess = ort.InferenceSession(
                model.SerializeToString(),
                sess_options=session_options(threads, {}),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime's own exception types
            raise ModelLoadError(f"ONNX Runtime could not load the tapped model: {exc}") from exc
        inp = sess.get_inputs()[0].name

        def run(
            x: np.ndarray, feed: dict[str, np.ndarray]
        ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
            inputs = {inp: x, **{fed[k]: v for k, v in feed.items() if k in fed}}
            vals = sess.run([*own, *tensors], inputs)
            return list(vals[: len(own)]), dict(zip(keys, vals[len(own) :], strict=True))

        return run


def _onnx_points(data: bytes) -> tuple[list[TapPoint], _OnnxImpl]:
    import onnx
    from onnx import shape_inference

    try:
        model = onnx.load_from_string(data)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the ONNX model: {exc}") from exc
    try:
        typed = shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort (custom ops)
        typed = model
    elem: dict[str, int] = {}
    for vi in [*typed.graph.value_info, *typed.graph.output, *typed.graph.input]:
        elem[vi.name] = vi.type.tensor_type.elem_type
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    nodes = list(model.graph.node)
    for i, n in enumerate(nodes):
        for o in n.output:
            producer[o] = i
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    graph_outputs = {o.name for o in model.graph.output}
    tapped_node: dict[int, str] = {}  # node index -> layer key (compute node and its tail)
    tensor_of: dict[str, str] = {}
    infos: list[tuple[str, str, set[str], int]] = []
    for i, n in enumerate(nodes):
        if n.op_type not in _ONNX_COMPUTE or not n.output:
            continue
        key = n.name or n.output[0]
        t, chain = n.output[0], [i]
        for _ in range(3):  # integer layers: follow Cast/Mul/Add to the float result
            if elem.get(t, onnx.TensorProto.FLOAT) in floats or t in graph_outputs:
                break
            nxt = consumers.get(t, [])
            if len(nxt) != 1 or nodes[nxt[0]].op_type not in _ONNX_FOLLOW:
                break
            chain.append(nxt[0])
            t = nodes[nxt[0]].output[0]
        if elem.get(t, onnx.TensorProto.FLOAT) not in floats:
            continue
        for c in chain:
            tapped_node[c] = key
        tensor_of[key] = t
        infos.append((key, n.op_type, {t, n.output[0], key}, i))
    initializers = {x.name for x in model.graph.initializer}

    def quantizer(i: int) -> str | None:
        """The QuantizeLinear behind the node's data input (through its DequantizeLinear
        and ops that only move or reshape values)."""
        t = nodes[i].input[0] if nodes[i].input else ""
        for _ in range(4):
            j = producer.get(t)
            if j is None:
                return None
            n = nodes[j]
            if n.op_type == "QuantizeLinear":
                return n.name or n.output[0]
            if n.op_type not in _ONNX_QUANT_PASS or not n.input:
                return None
            t = n.input[0]
        return None

    points: list[TapPoint] = []
    for order, (key, op, names, i) in enumerate(infos):
        found: list[str] = []
        seen: set[int] = set()
        stack = [producer[t] for t in nodes[i].input if t in producer and t not in initializers]
        while stack:
            j = stack.pop()
            if j in seen:
                continue
            seen.add(j)
            k = tapped_node.get(j)
            if k is not None and k != key:
                if k not in found:
                    found.append(k)
                continue
            stack.extend(
                producer[t] for t in nodes[j].input if t in producer and t not in initializers
            )
        points.append(
            TapPoint(
                key=key,
                op_type=op,
                names=frozenset(names),
                inputs=tuple(found),
                order=order,
                quantizer=quantizer(i),
            )
        )
    return points, _OnnxImpl(model, tensor_of, elem)


# OpenVINO ---------------------------------------------------------------------------------------
class _OvImpl:
    def __init__(self, read: Any) -> None:
        self.read = read

    def build(
        self, keys: list[str], threads: int | None, precision: str, cut: Sequence[str] = ()
    ) -> Any:
        import openvino as ov

        from cvdeploy.precision import require_native
        from cvdeploy.runtime.openvino import compile_config, type_name

        model, outputs = self.read()
        require_native(precision, what="the tapped model (its recorded precision)")
        ports = [outputs[k] for k in keys]
        n_orig = len(model.outputs)
        params: dict[str, Any] = {}
        if cut:
            from openvino import opset13 as ops

            for k in cut:
                port = outputs[k]
                targets = list(port.get_target_inputs())
                if any(t.get_node().get_type_name() == "Result" for t in targets):
                    continue  # a model output: left as it is
                prm = ops.parameter(port.get_partial_shape(), port.get_element_type())
                prm.set_friendly_name(f"cvdeploy_fed_{len(params)}")
                for t in targets:
                    t.replace_source_output(prm.output(0))
                params[k] = prm
            results = [*model.get_results(), *(ops.result(p) for p in ports)]
            model = ov.Model(results, [*model.get_parameters(), *params.values()], "tapped")
        else:
            model.add_outputs(ports)
        core = ov.Core()
        try:
            compiled = core.compile_model(
                model, "CPU", compile_config(threads, {}, precision=precision)
            )
        except Exception as exc:  # openvino raises RuntimeError with long messages
            raise ModelLoadError(f"OpenVINO could not compile the tapped model: {exc}") from exc
        got = type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if got != precision:
            raise ModelLoadError(f"OpenVINO compiled the tapped model for {got}, not {precision}")
        request = compiled.create_infer_request()
        own = list(compiled.outputs)[:n_orig]
        outs = list(compiled.outputs)[n_orig:]
        if len(outs) != len(keys):
            raise ModelLoadError("OpenVINO did not expose every tapped layer")

        n_in = len(compiled.inputs) - len(params)
        fed_index = {k: n_in + i for i, k in enumerate(params)}

        def run(
            x: np.ndarray, feed: dict[str, np.ndarray]
        ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
            inputs: dict[int, np.ndarray] = {0: x}
            inputs.update({fed_index[k]: v for k, v in feed.items() if k in fed_index})
            res = request.infer(inputs)
            return [np.array(res[o]) for o in own], {
                k: np.array(res[o]) for k, o in zip(keys, outs, strict=True)
            }

        return run


def _ov_points(files: Any) -> tuple[list[TapPoint], _OvImpl]:
    import openvino as ov

    def read() -> tuple[Any, dict[str, Any]]:
        core = ov.Core()
        try:
            if files.model_bytes is not None:
                w = np.frombuffer(files.weights_bytes or b"", dtype=np.uint8)
                model = core.read_model(model=files.model_bytes, weights=ov.Tensor(w))
            else:
                model = core.read_model(str(files.path))
        except Exception as exc:
            raise ModelLoadError(f"OpenVINO could not read {files.path.name}: {exc}") from exc
        return model, _ov_outputs(model)[0]

    model, _ = read()
    _, infos = _ov_outputs(model)
    return infos, _OvImpl(read)


def _ov_outputs(model: Any) -> tuple[dict[str, Any], list[TapPoint]]:
    ops = list(model.get_ordered_ops())
    tapped: dict[str, str] = {}  # friendly name of compute op or its bias Add -> key
    ports: dict[str, Any] = {}
    raw: list[tuple[str, str, set[str], Any]] = []
    for op in ops:
        if op.get_type_name() not in _OV_COMPUTE:
            continue
        key = op.get_friendly_name()
        out = op.output(0)
        names = {key, key.removesuffix("/WithoutBiases"), *out.get_names()}
        targets = [t.get_node() for t in out.get_target_inputs()]
        tapped[key] = key
        if len(targets) == 1 and targets[0].get_type_name() == "Add":
            add = targets[0]
            out = add.output(0)
            tapped[add.get_friendly_name()] = key
            names |= {add.get_friendly_name(), *out.get_names()}
        ports[key] = out
        raw.append((key, op.get_type_name(), names, op))

    def quantizer(op: Any) -> str | None:
        node = op.input(0).get_source_output().get_node()
        for _ in range(4):
            if node.get_type_name() == "FakeQuantize":
                return str(node.get_friendly_name())
            if node.get_type_name() not in _OV_QUANT_PASS:
                return None
            node = node.input(0).get_source_output().get_node()
        return None

    points: list[TapPoint] = []
    for order, (key, op_type, names, op) in enumerate(raw):
        found: list[str] = []
        seen: set[str] = set()
        stack = [i.get_source_output().get_node() for i in op.inputs()]
        while stack:
            node = stack.pop()
            name = node.get_friendly_name()
            if name in seen:
                continue
            seen.add(name)
            k = tapped.get(name)
            if k is not None and k != key:
                if k not in found:
                    found.append(k)
                continue
            if node.get_type_name() in ("Constant", "Parameter"):
                continue
            stack.extend(i.get_source_output().get_node() for i in node.inputs())
        points.append(
            TapPoint(
                key=key,
                op_type=op_type,
                names=frozenset(names),
                inputs=tuple(found),
                order=order,
                quantizer=quantizer(op),
            )
        )
    return ports, points
