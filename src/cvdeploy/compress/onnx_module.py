"""Run an ONNX graph as a trainable torch module: compression for models with no torch code.

An imported detector (an ``.onnx`` file from elsewhere) has weights but no training code.
:class:`OnnxModule` executes its graph node by node with torch operators, its convolution
and matrix weights as ``nn.Parameter`` s (other initializers as buffers): it can be
fine-tuned, quantization-aware trained (``torch.export`` traces it into plain ``aten``
convolutions that torchao's quantizer annotates) and exported again.

Supported: the operators of common CNN detectors and classifiers (see :data:`OPS`), with
static shapes except the batch: a graph exported with batch 1 runs with any batch (a
``Reshape`` to a leading 1 keeps the batch). Anything else is refused by name at load time.
ONNX's ``onnx2torch`` does this more broadly but requires torchvision, which we cannot
install next to the CPU torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvdeploy.errors import UsageError

__all__ = ["OPS", "OnnxModule"]

_Fn = Callable[["OnnxModule", Any, list[Any], dict[str, Any]], Any]


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(a: dict[str, Any], nd: int) -> tuple[list[int], bool]:
    """ONNX pads ``[b1, b2, ..., e1, e2, ...]`` as torch's symmetric ``[p1, p2]`` (and
    whether they are symmetric)."""
    p = list(a.get("pads", [0] * 2 * nd))
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise UsageError(f"auto_pad={a['auto_pad']!r} is not supported; re-export with pads")
    return p[:nd], p[:nd] == p[nd:]


def _conv_module(node: Any, a: dict[str, Any], w: np.ndarray, b: np.ndarray | None) -> nn.Module:
    """An ``nn.Conv2d`` for a 2-D Conv node with initializer weights (quantizers find
    convolutions by module); asymmetric pads go in front of it as ``nn.ZeroPad2d``."""
    if w.ndim != 4:
        raise UsageError(f"Conv {node.name}: only 2-D convolutions are supported")
    pads, sym = _pads(a, 2)
    pad: tuple[int, int] = (int(pads[0]), int(pads[1])) if sym else (0, 0)
    st, dil = a.get("strides", [1, 1]), a.get("dilations", [1, 1])
    conv = nn.Conv2d(
        int(w.shape[1]) * int(a.get("group", 1)), int(w.shape[0]),
        (int(w.shape[2]), int(w.shape[3])), stride=(int(st[0]), int(st[1])), padding=pad,
        dilation=(int(dil[0]), int(dil[1])), groups=int(a.get("group", 1)), bias=b is not None,
    )  # fmt: skip
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.array(w)))
        if b is not None and conv.bias is not None:
            conv.bias.copy_(torch.from_numpy(np.array(b)))
    if sym:
        return conv
    p = list(a["pads"])  # [top, left, bottom, right] -> ZeroPad2d(left, right, top, bottom)
    return nn.Sequential(nn.ZeroPad2d((p[1], p[3], p[0], p[2])), conv)


def _conv(m: OnnxModule, node: Any, x: list[Any], a: dict[str, Any]) -> Any:
    return m.layers[_key(node.output[0])](x[0])


def _pool(kind: str) -> _Fn:
    def run(m: OnnxModule, node: Any, x: list[Any], a: dict[str, Any]) -> Any:
        k = list(a["kernel_shape"])
        pads, sym = _pads(a, len(k))
        if not sym:
            raise UsageError(f"{node.op_type} {node.name} has asymmetric pads")
        stride = a.get("strides", [1] * len(k))
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            return F.max_pool2d(x[0], k, stride, pads, ceil_mode=ceil)
        return F.avg_pool2d(
            x[0], k, stride, pads, ceil_mode=ceil,
            count_include_pad=bool(a.get("count_include_pad", 0)),
        )  # fmt: skip

    return run


def _slice(m: OnnxModule, node: Any, x: list[Any], a: dict[str, Any]) -> Any:
    starts, ends = m.const(node.input[1]), m.const(node.input[2])
    axes = m.const(node.input[3]) if len(node.input) > 3 and node.input[3] else range(len(starts))
    steps = m.const(node.input[4]) if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    idx: list[Any] = [slice(None)] * x[0].dim()
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        big = 2**62
        idx[int(ax)] = slice(int(s), None if int(e) >= big else int(e), int(st))
    return x[0][tuple(idx)]


def _reshape(m: OnnxModule, node: Any, x: list[Any], a: dict[str, Any]) -> Any:
    shape = [int(v) for v in m.const(node.input[1])]
    if m.batch_one and shape and shape[0] == 1:
        shape[0] = x[0].shape[0]  # the graph was exported at batch 1: keep the batch
    shape = [x[0].shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x[0].reshape(shape)


def _resize(m: OnnxModule, node: Any, x: list[Any], a: dict[str, Any]) -> Any:
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "nearest":
        raise UsageError(f"Resize mode {mode!r} is not supported (nearest only)")
    inputs = list(node.input) + [""] * 4
    scales = m.const(inputs[2]) if inputs[2] else None
    sizes = m.const(inputs[3]) if inputs[3] else None
    if sizes is not None and len(sizes):
        return F.interpolate(x[0], size=[int(v) for v in sizes[2:]], mode="nearest")
    if scales is None or not len(scales):
        raise UsageError(f"Resize {node.name} has neither scales nor sizes")
    return F.interpolate(x[0], scale_factor=[float(v) for v in scales[2:]], mode="nearest")


def _gemm(m: OnnxModule, node: Any, x: list[Any], a: dict[str, Any]) -> Any:
    A = x[0].transpose(-1, -2) if a.get("transA", 0) else x[0]
    B = x[1] if a.get("transB", 0) else x[1].transpose(-1, -2)
    if a.get("alpha", 1.0) != 1.0 or (len(x) > 2 and a.get("beta", 1.0) != 1.0):
        raise UsageError(f"Gemm {node.name} with alpha/beta is not supported")
    return F.linear(A, B, x[2] if len(x) > 2 else None)


def _bn(m: OnnxModule, node: Any, x: list[Any], a: dict[str, Any]) -> Any:
    return F.batch_norm(
        x[0], x[3], x[4], x[1], x[2], training=False, eps=float(a.get("epsilon", 1e-5))
    )


def _split(m: OnnxModule, node: Any, x: list[Any], a: dict[str, Any]) -> Any:
    axis = int(a.get("axis", 0))
    if len(node.input) > 1 and node.input[1]:
        sizes = [int(v) for v in m.const(node.input[1])]
    elif "split" in a:
        sizes = [int(v) for v in a["split"]]
    else:
        n = len(node.output)
        sizes = [x[0].shape[axis] // n] * n
    return torch.split(x[0], sizes, dim=axis)


def _reduce(fn: str) -> _Fn:
    def run(m: OnnxModule, node: Any, x: list[Any], a: dict[str, Any]) -> Any:
        if len(node.input) > 1 and node.input[1]:
            axes = [int(v) for v in m.const(node.input[1])]
        else:
            axes = [int(v) for v in a.get("axes", range(x[0].dim()))]
        keep = bool(a.get("keepdims", 1))
        if fn == "max":
            return torch.amax(x[0], dim=axes, keepdim=keep)
        return getattr(torch, fn)(x[0], dim=axes, keepdim=keep)

    return run


OPS: dict[str, _Fn] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda m, n, x, a: torch.matmul(x[0], x[1]),
    "BatchNormalization": _bn,
    "Relu": lambda m, n, x, a: F.relu(x[0]),
    "LeakyRelu": lambda m, n, x, a: F.leaky_relu(x[0], float(a.get("alpha", 0.01))),
    "Sigmoid": lambda m, n, x, a: torch.sigmoid(x[0]),
    "SiLU": lambda m, n, x, a: F.silu(x[0]),
    "HardSigmoid": lambda m, n, x, a: torch.clamp(
        x[0] * float(a.get("alpha", 0.2)) + float(a.get("beta", 0.5)), 0, 1
    ),
    "HardSwish": lambda m, n, x, a: F.hardswish(x[0]),
    "Tanh": lambda m, n, x, a: torch.tanh(x[0]),
    "Exp": lambda m, n, x, a: torch.exp(x[0]),
    "Add": lambda m, n, x, a: x[0] + x[1],
    "Sub": lambda m, n, x, a: x[0] - x[1],
    "Mul": lambda m, n, x, a: x[0] * x[1],
    "Div": lambda m, n, x, a: x[0] / x[1],
    "Concat": lambda m, n, x, a: torch.cat(x, int(a["axis"])),
    "Slice": _slice,
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda m, n, x, a: x[0].mean(dim=(2, 3), keepdim=True),
    "Reshape": _reshape,
    "Flatten": lambda m, n, x, a: x[0].flatten(int(a.get("axis", 1))),
    "Resize": _resize,
    "Transpose": lambda m, n, x, a: x[0].permute(*a["perm"]),
    "Softmax": lambda m, n, x, a: torch.softmax(x[0], int(a.get("axis", -1))),
    "Identity": lambda m, n, x, a: x[0],
    "Split": _split,
    "ReduceSum": _reduce("sum"),
    "ReduceMean": _reduce("mean"),
    "ReduceMax": _reduce("max"),
}
"""The supported ONNX operators."""

_CONSTANT_INPUTS = frozenset(
    {"Slice", "Reshape", "Resize", "Split", "ReduceSum", "ReduceMean", "ReduceMax", "Conv"}
)
"""Operators given only their first input as a tensor: the rest are constants they read
with :meth:`OnnxModule.const` (shapes, bounds, scales), or a convolution's own weights."""

_TRAINABLE = {"Gemm": (1, 2), "MatMul": (1,), "BatchNormalization": (1, 2)}
"""Which inputs of an operator are weights to train (when they are initializers)."""


def _fuse_silu(nodes: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
    """``x * Sigmoid(x)`` (how SiLU is exported) as one SiLU node: torch's quantizers treat
    ``silu`` as an activation, but a ``Mul`` as an operator whose inputs they quantize."""
    import onnx

    users: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    sig = {n.output[0]: n for n in nodes if n.op_type == "Sigmoid"}
    fused: set[str] = set()
    out: list[tuple[Any, dict[str, Any]]] = []
    for n in nodes:
        if n.op_type == "Mul" and len(n.input) == 2:
            for a, b in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
                if b in sig and sig[b].input[0] == a and users.get(b) == 1:
                    fused.add(b)
                    silu = onnx.helper.make_node("SiLU", [a], list(n.output), name=n.name)
                    out.append((silu, {}))
                    break
            else:
                out.append((n, _attrs(n)))
            continue
        out.append((n, _attrs(n)))
    return [(n, a) for n, a in out if not (n.op_type == "Sigmoid" and n.output[0] in fused)]


def _key(name: str) -> str:
    return "t_" + re.sub(r"\W", "_", name)


class OnnxModule(nn.Module):
    """An ONNX graph executed with torch operators.

    Args:
        path: The ``.onnx`` file, or a serialized model (``bytes``).

    Raises:
        UsageError: The file is not an ONNX model, has several inputs, or uses an operator
            outside :data:`OPS` (named in the message).
    """

    def __init__(self, path: Path | str | bytes) -> None:
        super().__init__()
        import onnx
        from onnx import numpy_helper

        what = "the serialized model" if isinstance(path, bytes) else str(path)
        try:
            model = (
                onnx.load_model_from_string(path)
                if isinstance(path, bytes)
                else onnx.load(str(path))
            )
        except Exception as exc:  # onnx raises several types
            raise UsageError(f"{what} is not a readable ONNX model: {exc}") from exc
        g = model.graph
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                inits[n.output[0]] = numpy_helper.to_array(_attrs(n)["value"])
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1:
            raise UsageError(
                f"{what} has {len(inputs)} inputs; only single-input models are supported"
            )
        unsupported = sorted({n.op_type for n in g.node if n.op_type not in OPS} - {"Constant"})
        if unsupported:
            raise UsageError(
                f"{what} uses ONNX operators that cannot be run as torch: {', '.join(unsupported)}",
                hint=f"supported: {', '.join(sorted(OPS))}",
            )
        dims = inputs[0].type.tensor_type.shape.dim
        self.batch_one = bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in g.output]
        trainable = {
            n.input[i] for n in g.node for i in _TRAINABLE.get(n.op_type, ()) if i < len(n.input)
        }
        self.params = nn.ParameterDict()
        self.layers = nn.ModuleDict()
        conv_inits: set[str] = set()
        for n in g.node:
            if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits:
                w = inits[n.input[1]]
                b = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
                self.layers[_key(n.output[0])] = _conv_module(n, _attrs(n), w, b)
                conv_inits.update(n.input[1:])
            elif n.op_type == "Conv":
                raise UsageError(f"Conv {n.name} has a computed weight; only constant weights")
        inits = {k: v for k, v in inits.items() if k not in conv_inits}
        self._consts: dict[str, np.ndarray] = {}
        # small constants (shapes, slice bounds, resize scales) read at trace time
        self._shapes = {k: v for k, v in inits.items() if v.size <= 16}
        for name, arr in inits.items():
            if name in trainable and arr.dtype.kind == "f":
                self.params[_key(name)] = nn.Parameter(torch.from_numpy(arr.copy()))
            elif arr.dtype.kind == "f" and arr.size > 1:
                self.register_buffer(_key(name), torch.from_numpy(arr.copy()))
            else:
                self._consts[name] = arr
        self._nodes = _fuse_silu([n for n in g.node if n.op_type != "Constant"])

    def first_conv_weight(self) -> nn.Parameter:
        """The weight of the first convolution in graph order (to fold an input scale)."""
        node = next((n for n, _ in self._nodes if n.op_type == "Conv"), None)
        if node is None:
            raise UsageError("the graph has no convolution")
        conv = self.layers[_key(node.output[0])]
        conv = conv[-1] if isinstance(conv, nn.Sequential) else conv
        return conv.weight  # type: ignore[return-value]

    def input_convolutions(self) -> list[tuple[nn.Conv2d, list[tuple[int, tuple[str, ...]]]]]:
        """The convolutions that read the graph input, each with where every one of its input
        channels comes from: ``(input channel, path)``, the path naming the spatial Slices
        it went through (the space-to-depth of YOLOX's Focus); channels with the same path
        hold the same pixels. The input may reach them only through Slices, channel
        Concats and Identities: that is what lets an input scale or channel order be folded
        into their weights.

        Raises:
            UsageError: The input reaches another operator (named), a Concat mixes it with
                computed tensors, or it is an output of the graph.
        """
        rank = len(self.input_shape) or 4
        channels = self.input_shape[1] if len(self.input_shape) > 1 else -1
        if channels < 1:
            raise UsageError("the graph input's channel count is not fixed")
        labels: dict[str, list[tuple[int, tuple[str, ...]]]] = {
            self.input_name: [(c, ()) for c in range(channels)]
        }
        found: list[tuple[nn.Conv2d, list[tuple[int, tuple[str, ...]]]]] = []
        for node, a in self._nodes:
            used = [i for i in node.input if i in labels]
            if not used:
                continue
            what = f"{node.op_type} {node.name or node.output[0]!r}"
            if node.op_type == "Conv" and node.input[0] in labels:
                conv = self.layers[_key(node.output[0])]
                if isinstance(conv, nn.Sequential):
                    conv = conv[-1]
                found.append((conv, labels[node.input[0]]))  # type: ignore[arg-type]
            elif node.op_type == "Identity":
                labels[node.output[0]] = labels[node.input[0]]
            elif node.op_type == "Slice" and node.input[0] in labels:
                starts, ends = self.const(node.input[1]), self.const(node.input[2])
                n = len(starts)
                axes = (
                    self.const(node.input[3]) if len(node.input) > 3 and node.input[3] else range(n)
                )
                steps = (
                    self.const(node.input[4]) if len(node.input) > 4 and node.input[4] else [1] * n
                )
                out = labels[node.input[0]]
                spatial = False
                for st, en, ax, step in zip(starts, ends, axes, steps, strict=True):
                    if int(ax) % rank == 1:
                        out = out[slice(int(st), int(en), int(step))]
                    elif int(ax) % rank != 0:
                        spatial = True
                tag = (node.output[0],) if spatial else ()
                labels[node.output[0]] = [(c, path + tag) for c, path in out]
            elif node.op_type == "Concat" and int(a["axis"]) % rank == 1:
                if len(used) != len([i for i in node.input if i]):
                    raise UsageError(
                        f"the graph input reaches {what}, which mixes it with computed tensors"
                    )
                labels[node.output[0]] = [lab for i in node.input if i for lab in labels[i]]
            else:
                raise UsageError(
                    f"the graph input reaches {what}: only convolutions (through Slice and "
                    "channel Concat) can take a folded input scale or channel order"
                )
        if any(o in labels for o in self.output_names):
            raise UsageError("the graph input reaches an output without a convolution")
        if not found:
            raise UsageError("the graph input reaches no convolution")
        return found

    def const(self, name: str) -> list[Any]:
        """A constant input (shapes, slice bounds, scales) as a Python list."""
        if name not in self._shapes:
            raise UsageError(f"input {name!r} must be a constant for this conversion")
        return list(np.asarray(self._shapes[name]).reshape(-1).tolist())

    def _value(self, name: str, env: dict[str, Any]) -> Any:
        if name in env:
            return env[name]
        k = _key(name)
        if k in self.params:
            return self.params[k]
        buf = getattr(self, k, None)
        if isinstance(buf, torch.Tensor):
            return buf
        if name in self._consts:
            arr = self._consts[name]
            return float(arr) if arr.size == 1 else torch.from_numpy(arr.copy())
        raise UsageError(f"tensor {name!r} is used before it is computed")

    def forward(self, x: torch.Tensor) -> Any:
        env: dict[str, Any] = {self.input_name: x}
        for node, a in self._nodes:
            fn = OPS[node.op_type]
            if node.op_type in _CONSTANT_INPUTS:
                args = [self._value(node.input[0], env)]
            else:
                args = [self._value(i, env) for i in node.input if i]
            out = fn(self, node, args, a)
            if isinstance(out, tuple | list):
                env.update(zip(node.output, out, strict=True))
            else:
                env[node.output[0]] = out
        outs = [env[o] for o in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)
