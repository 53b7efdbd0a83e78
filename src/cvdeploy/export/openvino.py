"""OpenVINO IR target: ``openvino.convert_model`` from the ONNX source (or the torch module).

The IR is saved with FP32 weights, or FP16 weights (``compress_to_fp16``) for ``fp16``;
OpenVINO computes in the device's inference precision either way, the weights file is
half the size. Batch and input size follow :func:`cvdeploy.export.shapes.target_input_shape`:
OpenVINO takes a dynamic batch and, from a source whose size is dynamic, a dynamic size.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvdeploy.errors import ModelLoadError, UsageError
from cvdeploy.spec import IOSpec, TensorSpec

if TYPE_CHECKING:
    from cvdeploy.export.run import ExportContext, Produced


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

    from cvdeploy.export.run import Produced
    from cvdeploy.export.shapes import target_input_shape

    if ctx.precision not in ("fp32", "fp16"):
        raise UsageError(f"OpenVINO export produces fp32 or fp16, not {ctx.precision}")
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
