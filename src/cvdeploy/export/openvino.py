"""OpenVINO IR target: ``openvino.convert_model`` from the ONNX source (or the torch module).

Precisions (what the artifact computes in is recorded with it, and the runner pins it):

- ``fp32``: FP32 weights, FP32 compute on every CPU.
- ``fp16``: FP16 weights (``compress_to_fp16``), FP16 compute; needs native FP16 arithmetic.
- ``bf16``: FP32 weights, bf16 compute; needs native bf16 (AVX512_BF16, AMX).
- ``int8-bf16``: the bundle's OpenVINO INT8 IR (from ``cvdeploy quantize``), unchanged, with
  its float parts computed in bf16; gated against the FP32 model it was quantized from.

Batch and input size follow :func:`cvdeploy.export.shapes.target_input_shape`: OpenVINO
takes a dynamic batch and, from a source whose size is dynamic, a dynamic size.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvdeploy.errors import ModelLoadError, UsageError
from cvdeploy.spec import IOSpec, TensorSpec

if TYPE_CHECKING:
    from cvdeploy.export.base import ExportContext, Produced


def export_openvino(ctx: ExportContext, out_dir: Path) -> Produced:
    """Convert the source artifact to an OpenVINO IR (``model.xml`` + ``model.bin``).

    Args:
        ctx: The export context (source artifact, options, precision ``fp32``/``fp16``).
        out_dir: The artifact's staging directory.

    Returns:
        What was produced (IOSpec with ``-1`` where the IR accepts any size).

    Raises:
        UsageError: The precision or the requested shape is not possible from this source.
        ModelLoadError: OpenVINO could not convert the source.
    """
    import openvino as ov

    from cvdeploy.export.base import Produced
    from cvdeploy.export.shapes import target_input_shape

    if ctx.precision == "int8-bf16":
        return _int8_with_bf16(ctx, out_dir)
    if ctx.precision not in ("fp32", "fp16", "bf16"):
        raise UsageError(
            f"OpenVINO export produces fp32, fp16, bf16 or int8-bf16, not {ctx.precision}"
        )
    shape = target_input_shape(ctx, "openvino", dynamic_size_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ctx.torch_module is not None:
                import torch

                ex_shape = [1 if d == -1 else d for d in shape]
                example = torch.zeros(*ex_shape)
                model = ov.convert_model(
                    ctx.torch_module.eval(), example_input=example, input=[shape]
                )
            elif ctx.source.format == "onnx":
                model = ov.convert_model(str(ctx.source_file))
            else:
                raise UsageError(
                    f"OpenVINO export needs an ONNX or torch source; the source artifact "
                    f"{ctx.source.id} is {ctx.source.format}"
                )
            if ctx.torch_module is None:
                model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
    except UsageError:
        raise
    except Exception as exc:  # openvino raises many exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"openvino.convert_model failed on {ctx.source.id}: {first}",
            hint="check the source with `cvdeploy predict`; report the operator if unsupported",
        ) from exc
    model.inputs[0].get_tensor().set_names({_input_name(ctx)})
    for i, out in enumerate(model.outputs):
        if not out.get_names():
            out.get_tensor().set_names({_output_name(ctx, i)})
    half = ctx.precision == "fp16"
    ov.save_model(model, str(out_dir / "model.xml"), compress_to_fp16=half)
    io = _io_of(model)
    facts: dict[str, Any] = {
        "converter": f"openvino.convert_model {ov.get_version()}",
        "from": "torch" if ctx.torch_module is not None else ctx.source.format,
        "compress_to_fp16": half,
    }
    return Produced("openvino", ctx.precision, io, "model.xml", facts)


def _int8_with_bf16(ctx: ExportContext, out_dir: Path) -> Produced:
    """The source INT8 IR, copied as is: only its recorded inference precision differs."""
    from cvdeploy.export.base import Produced

    if ctx.source.format != "openvino" or not ctx.source.precision.startswith("int8"):
        raise UsageError(
            f"openvino:int8-bf16 needs the bundle's OpenVINO INT8 artifact as its source, "
            f"not {ctx.source.id}"
        )
    src_dir = ctx.source_file.parent
    for ref in ctx.source.files:
        name = Path(ref.path).name
        shutil.copyfile(src_dir / name, out_dir / name)
    facts = {"from": ctx.source.id, "float_parts": "bf16", "ir": "unchanged INT8 IR"}
    return Produced("openvino", "int8-bf16", ctx.source.io, ctx.source_file.name, facts, "bf16")


def _input_name(ctx: ExportContext) -> str:
    return ctx.source.io.input.name or "images"


def _output_name(ctx: ExportContext, i: int) -> str:
    outs = ctx.source.io.outputs
    return outs[i].name if i < len(outs) else f"output{i}"


def _io_of(model: Any) -> IOSpec:
    def spec(port: Any, fallback: str) -> TensorSpec:
        dims = tuple(
            d.get_length() if d.is_static and d.get_length() > 0 else -1
            for d in port.get_partial_shape()
        )
        names = port.get_names()
        name = port.get_any_name() if names else fallback
        return TensorSpec(name=name, shape=dims)

    if not model.inputs:
        raise ModelLoadError("the converted OpenVINO model has no input")
    return IOSpec(
        inputs=tuple(spec(p, f"input{i}") for i, p in enumerate(model.inputs)),
        outputs=tuple(spec(p, f"output{i}") for i, p in enumerate(model.outputs)),
        layout="NCHW",
    )
