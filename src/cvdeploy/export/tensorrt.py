"""TensorRT target: build a serialized engine from the ONNX graph (TensorRT 10 API).

FP32, FP16 (``BuilderFlag.FP16``) and INT8 from an explicitly quantized (Q/DQ) ONNX graph:
the scales come from the graph's QuantizeLinear/DequantizeLinear nodes, never from
TensorRT's implicit calibrator. Dynamic batch (and, from a source with a dynamic size, a
dynamic size) is served by one optimisation profile whose range is recorded with the
artifact. Needs an NVIDIA GPU: elsewhere the exporter is listed as unavailable.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvdeploy.errors import BackendUnavailable, CheckFailed, ModelLoadError, UsageError
from cvdeploy.fsutil import pid_prefix, sweep_stale
from cvdeploy.runtime.tensorrt import tensorrt_unavailable
from cvdeploy.spec import IOSpec, TensorSpec

if TYPE_CHECKING:
    from cvdeploy.export.base import ExportContext, Produced

MAX_DYNAMIC_BATCH = 32
WORKSPACE_BYTES = 4 << 30
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def profile_ranges(
    shape: tuple[int, int, int, int], opt_hw: tuple[int, int], *, stride: int = 32
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes of the optimisation profile for a shape with ``-1`` dims.

    Batch ``-1``: 1..:data:`MAX_DYNAMIC_BATCH` (opt 1). Height/width ``-1``: ``stride`` to
    twice the spec's size (opt: the spec's size).
    """
    b, c, h, w = shape
    mn = (1 if b == -1 else b, c, stride if h == -1 else h, stride if w == -1 else w)
    opt = (1 if b == -1 else b, c, opt_hw[0] if h == -1 else h, opt_hw[1] if w == -1 else w)
    mx = (
        MAX_DYNAMIC_BATCH if b == -1 else b,
        c,
        2 * opt_hw[0] if h == -1 else h,
        2 * opt_hw[1] if w == -1 else w,
    )
    return mn, opt, mx


def has_qdq(onnx_file: Path) -> bool:
    """Whether an ONNX graph is explicitly quantized (has Q/DQ nodes)."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def export_tensorrt(ctx: ExportContext, out_dir: Path) -> Produced:
    """Build ``model.engine`` from the source's ONNX graph.

    Args:
        ctx: The export context (precision ``fp32``, ``fp16`` or ``int8``).
        out_dir: The artifact's staging directory.

    Returns:
        What was produced.

    Raises:
        BackendUnavailable: No GPU or no tensorrt package here.
        UsageError: INT8 from a graph without Q/DQ nodes, or an impossible shape.
        ModelLoadError: TensorRT could not parse the graph or build the engine.
    """
    from cvdeploy.export.base import Produced
    from cvdeploy.export.shapes import target_input_shape

    reason = tensorrt_unavailable()
    if reason:
        raise BackendUnavailable(f"cannot export tensorrt: {reason}")
    shape = target_input_shape(ctx, "tensorrt", dynamic_size_ok=True)
    with _temporary("cvdeploy-trt-") as tmp:
        if ctx.torch_module is not None:
            if ctx.precision == "int8":
                raise UsageError("INT8 TensorRT needs a Q/DQ ONNX source, not a torch model")
            from cvdeploy.export.onnx import torch_to_onnx

            onnx_file = Path(tmp) / "model.onnx"
            torch_to_onnx(
                ctx.torch_module,
                onnx_file,
                imgsz=ctx.options.imgsz or ctx.spec.imgsz,
                channels=shape[1],
                batch=max(shape[0], 1),
                dynamic=shape[0] == -1,
                opset=ctx.options.opset,
                simplify=ctx.options.simplify,
            )
        elif ctx.source.format == "onnx":
            onnx_file = ctx.source_file
        else:
            raise UsageError(
                f"TensorRT export needs an ONNX or torch source; {ctx.source.id} is "
                f"{ctx.source.format}"
            )
        if ctx.precision == "int8" and not has_qdq(onnx_file):
            raise UsageError(
                f"INT8 TensorRT needs an explicitly quantized graph; {ctx.source.id} has no "
                "QuantizeLinear/DequantizeLinear nodes",
                hint="quantize to a Q/DQ ONNX first "
                "(`cvdeploy quantize BUNDLE --backend tensorrt`)",
            )
        engine, io, facts = _build(onnx_file, ctx, shape)
    (out_dir / "model.engine").write_bytes(engine)
    return Produced("tensorrt", ctx.precision, io, "model.engine", facts)


def _build(
    onnx_file: Path, ctx: ExportContext, shape: tuple[int, int, int, int]
) -> tuple[bytes, IOSpec, dict[str, Any]]:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode in 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errs = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT could not parse {ctx.source.id}: {errs}"[:800])
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    # TensorRT enables TF32 by default (10-bit mantissa convolutions on Ampere and later):
    # an FP32 engine computes in FP32 only with the flag cleared.
    config.clear_flag(trt.BuilderFlag.TF32)
    if ctx.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if ctx.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    inp = network.get_input(0)
    net_shape = tuple(int(d) for d in inp.shape)
    facts: dict[str, Any] = {
        "tensorrt": trt.__version__,
        "workspace_bytes": WORKSPACE_BYTES,
        "tf32": False,
        "fp16_kernels": ctx.precision in ("fp16", "int8"),
    }
    if -1 in net_shape or -1 in shape:
        opt_hw = (int(ctx.spec.imgsz[0]), int(ctx.spec.imgsz[1]))
        mn, opt, mx = profile_ranges(shape, opt_hw, stride=ctx.spec.stride)
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, mn, opt, mx)
        config.add_optimization_profile(profile)
        facts["profile"] = {"min": list(mn), "opt": list(opt), "max": list(mx)}
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckFailed(
            f"TensorRT could not build a {ctx.precision} engine from {ctx.source.id}",
            hint="see TensorRT's log above (unsupported layer or not enough GPU memory)",
        )
    outputs = []
    for i in range(network.num_outputs):
        t = network.get_output(i)
        outputs.append(TensorSpec(name=t.name, shape=tuple(int(d) for d in t.shape)))
    io = IOSpec(
        inputs=(TensorSpec(name=inp.name, shape=shape),),
        outputs=tuple(outputs),
        layout="NCHW",
    )
    return bytes(serialized), io, facts


def _temporary(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder named with this process's id; those left by killed processes
    (``kill -9`` gives no chance to clean up) are removed first."""
    sweep_stale(Path(tempfile.gettempdir()), prefix)
    return tempfile.TemporaryDirectory(prefix=pid_prefix(prefix))
