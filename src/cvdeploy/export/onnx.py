"""ONNX target: export a torch module (TorchScript exporter) and simplify it with onnxslim.

torch 2.13's default dynamo exporter needs onnxscript and rejects a batch-1 example input
with a dynamic batch; the TorchScript exporter (``dynamo=False``) handles both, so it is
used here. onnxslim's simplified graph is kept only when it computes the same outputs.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cvdeploy.errors import CheckFailed, ModelLoadError, UsageError
from cvdeploy.spec import IOSpec, TensorSpec

if TYPE_CHECKING:
    from cvdeploy.export.base import ExportContext, Produced

SIMPLIFY_ATOL = 1e-5


def export_onnx(ctx: ExportContext, out_dir: Path) -> Produced:
    """ONNX target: from a torch source with the TorchScript exporter."""
    from cvdeploy.export.base import Produced

    if ctx.torch_module is None:
        raise UsageError(
            f"ONNX export needs a torch source; the source artifact is {ctx.source.format}"
        )
    if ctx.precision != "fp32":
        raise UsageError(
            f"ONNX export produces fp32 only, not {ctx.precision}",
            hint="ask for onnx:fp32 beside openvino:fp16 / tflite:fp16 / tensorrt:fp16",
        )
    hw = ctx.options.imgsz or ctx.spec.imgsz
    io, facts = torch_to_onnx(
        ctx.torch_module,
        out_dir / "model.onnx",
        imgsz=hw,
        channels=ctx.spec.preprocess.channels,
        batch=ctx.options.batch,
        dynamic=ctx.options.dynamic,
        opset=ctx.options.opset,
        simplify=ctx.options.simplify,
    )
    return Produced("onnx", "fp32", io, "model.onnx", facts)


def torch_to_onnx(
    module: object,
    out_file: Path,
    *,
    imgsz: tuple[int, int],
    channels: int = 3,
    batch: int = 1,
    dynamic: bool = False,
    opset: int = 17,
    simplify: bool = True,
    input_name: str = "images",
    output_names: tuple[str, ...] = ("output0",),
) -> tuple[IOSpec, dict[str, object]]:
    """Export ``module`` (eval mode) to ``out_file``.

    Args:
        module: A ``torch.nn.Module``.
        out_file: Destination ``.onnx`` path.
        imgsz: Input height and width.
        channels: Input channels.
        batch: Fixed batch size (ignored with ``dynamic``).
        dynamic: Dynamic batch dimension.
        opset: ONNX opset.
        simplify: Simplify with onnxslim when outputs stay equal.
        input_name: Name of the graph input.
        output_names: Names of the graph outputs.

    Returns:
        The artifact's IOSpec and a dict of export facts (simplified or not, why).
    """
    import onnx
    import torch

    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    module = module.eval()
    example = torch.zeros(1 if dynamic else batch, channels, *imgsz)
    with torch.inference_mode():
        n_out = len(_as_list(module(example)))
    if len(output_names) != n_out:
        output_names = ("output0",) if n_out == 1 else tuple(f"output{i}" for i in range(n_out))
    axes = (
        {input_name: {0: "batch"}, **{o: {0: "batch"} for o in output_names}} if dynamic else None
    )
    tmp = out_file.with_suffix(".raw.onnx")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many types
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"torch.onnx.export failed: {str(exc).splitlines()[0]}") from exc
    facts: dict[str, object] = {
        "exporter": "torch.onnx (TorchScript)",
        "opset": opset,
        "simplified": False,
    }
    if simplify:
        facts.update(
            _try_simplify(
                tmp, out_file, imgsz=imgsz, channels=channels, batch=1 if dynamic else batch
            )
        )
    if not out_file.exists():
        shutil.move(tmp, out_file)
    tmp.unlink(missing_ok=True)
    model = onnx.load(str(out_file))
    onnx.checker.check_model(model)
    return _io_of(model, dynamic=dynamic), facts


def _as_list(out: object) -> list[object]:
    return list(out) if isinstance(out, list | tuple) else [out]


def _run_ort(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, {sess.get_inputs()[0].name: x})]


def _try_simplify(
    raw: Path, out_file: Path, *, imgsz: tuple[int, int], channels: int, batch: int
) -> dict[str, object]:
    try:
        import onnxslim
    except ImportError:
        return {"simplified": False, "simplify_note": "onnxslim not installed"}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(str(raw))
        import onnx

        onnx.save(slim, str(out_file))
    except Exception as exc:  # onnxslim failures must not lose the export
        out_file.unlink(missing_ok=True)
        return {"simplified": False, "simplify_note": f"onnxslim failed: {exc}"[:200]}
    x = np.random.default_rng(0).random((batch, channels, *imgsz), dtype=np.float32)
    ref, got = _run_ort(raw, x), _run_ort(out_file, x)
    err = max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True))
    if err > SIMPLIFY_ATOL * max(1.0, max(float(np.abs(a).max()) for a in ref)):
        out_file.unlink()
        return {
            "simplified": False,
            "simplify_note": f"onnxslim changed outputs (max abs error {err:.3g}): kept raw",
        }
    return {"simplified": True, "simplify_max_abs_error": err}


def _io_of(model: object, *, dynamic: bool) -> IOSpec:
    graph = model.graph  # type: ignore[attr-defined]
    inits = {i.name for i in graph.initializer}

    def spec(v: Any) -> TensorSpec:
        dims = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
            for d in v.type.tensor_type.shape.dim
        ]  # type: ignore[attr-defined]
        return TensorSpec(name=v.name, shape=tuple(dims))  # type: ignore[attr-defined]

    inputs = tuple(spec(i) for i in graph.input if i.name not in inits)
    outputs = tuple(spec(o) for o in graph.output)
    if not inputs:
        raise CheckFailed("the exported ONNX graph has no input")
    return IOSpec(inputs=inputs, outputs=outputs, layout="NCHW")
