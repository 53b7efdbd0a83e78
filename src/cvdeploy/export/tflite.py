"""TFLite target: onnx2tf (on tensorflow-cpu) converts the ONNX graph to an NHWC TFLite model.

onnx2tf writes an FP32 and an FP16-weight model in one run; the one asked for is kept. It
runs in a subprocess with its own working directory, because it reads (and otherwise tries
to download) a file of sample images from that directory: the file is written there from
the user's own gate images, so nothing is fetched. A torch source is first exported to ONNX
with the same exporter as the ``onnx`` target.

The artifact takes NHWC input (``IOSpec.layout == "NHWC"``); the Predictor feeds it so.
TFLite takes a dynamic batch (from a source whose batch is dynamic), not a dynamic size.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cvdeploy.errors import CheckFailed, ModelLoadError, UsageError
from cvdeploy.fsutil import pid_prefix, sweep_stale
from cvdeploy.spec import IOSpec, TensorSpec

if TYPE_CHECKING:
    from cvdeploy.export.base import ExportContext, Produced

# The file onnx2tf (utils/common_functions.py: download_test_image_data) reads from its
# working directory before it tries to download it: 20 RGB images, 128x128, float32 0..1.
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
SAMPLE_COUNT = 20
SAMPLE_HW = 128
CONVERT_TIMEOUT_S = 1800
_OUT_FILES = {"fp32": "model_float32.tflite", "fp16": "model_float16.tflite"}


def sample_array(images: list[np.ndarray]) -> np.ndarray:
    """The onnx2tf sample file's content from BGR uint8 images: [20,128,128,3] RGB 0..1."""
    import cv2

    if not images:
        raise UsageError("onnx2tf needs at least one sample image", hint="pass --data")
    out = np.empty((SAMPLE_COUNT, SAMPLE_HW, SAMPLE_HW, 3), np.float32)
    for i in range(SAMPLE_COUNT):
        img = images[i % len(images)]
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        small = cv2.resize(img, (SAMPLE_HW, SAMPLE_HW), interpolation=cv2.INTER_AREA)
        out[i] = small[..., ::-1].astype(np.float32) / 255.0
    return out


def export_tflite(ctx: ExportContext, out_dir: Path) -> Produced:
    """Convert the source artifact to ``model.tflite`` (FP32 or FP16 weights).

    Args:
        ctx: The export context (source artifact, options, precision ``fp32``/``fp16``).
        out_dir: The artifact's staging directory.

    Returns:
        What was produced (NHWC IOSpec read back from the TFLite model).

    Raises:
        UsageError: The precision or the requested shape is not possible from this source.
        ModelLoadError: onnx2tf failed.
    """
    from cvdeploy.export.base import Produced
    from cvdeploy.export.shapes import target_input_shape

    if ctx.precision not in _OUT_FILES:
        raise UsageError(
            f"TFLite export produces fp32 or fp16, not {ctx.precision}",
            hint="INT8 TFLite from an fp32 source is not supported",
        )
    if ctx.options.dynamic and ctx.options.imgsz is None and ctx.torch_module is None:
        hw = ctx.source.io.input.shape[2:4]
        if -1 in hw:
            raise UsageError(
                "TFLite cannot take a dynamic input size; the source has one",
                hint="give --imgsz H,W to fix it (a dynamic batch is kept)",
            )
    shape = target_input_shape(ctx, "tflite", dynamic_size_ok=False)
    with _temporary("cvdeploy-onnx2tf-") as tmp_s:
        tmp = Path(tmp_s)
        if ctx.torch_module is not None:
            onnx_file, onnx_facts = _torch_to_onnx(ctx, tmp, shape)
        elif ctx.source.format == "onnx":
            # onnx2tf rewrites its input file (onnxsim in place): give it a copy, never the
            # bundle's file (hard-linked to the published bundle while staging).
            shutil.copytree(ctx.source_file.parent, tmp / "src")
            onnx_file, onnx_facts = tmp / "src" / ctx.source_file.name, {}
        else:
            raise UsageError(
                f"TFLite export needs an ONNX or torch source; the source artifact "
                f"{ctx.source.id} is {ctx.source.format}"
            )
        np.save(tmp / SAMPLE_FILE, sample_array(ctx.images))
        src_shape = ctx.source.io.input.shape if ctx.torch_module is None else shape
        if -1 in src_shape[2:4]:
            # onnx2tf cannot follow a dynamic height/width through the graph (a real
            # Ultralytics export fails with "x=tf.Tensor(shape=(1, 2, None))"): convert a copy
            # whose input has the bundle's size, so every shape in the graph is static.
            onnx_facts["input_fixed_to"] = fix_input_shape(onnx_file, shape)
            src_shape = (shape[0] if src_shape[0] == -1 else src_shape[0], *shape[1:])
        log = _run_onnx2tf(onnx_file, tmp, ctx.source.io.input.name, shape, src_shape)
        produced = tmp / "out" / _OUT_FILES[ctx.precision]
        if not produced.is_file():
            raise ModelLoadError(
                f"onnx2tf wrote no {produced.name}: {_tail(log)}",
                hint="see onnx2tf's message above; the graph may use an unsupported operator",
            )
        dst = out_dir / "model.tflite"
        dst.write_bytes(produced.read_bytes())
    io = tflite_io(dst, ctx.source.io)
    if io.input.shape[1:3] != (shape[2], shape[3]) or io.input.shape[3] != shape[1]:
        raise CheckFailed(
            f"onnx2tf produced input {list(io.input.shape)}, expected NHWC "
            f"{[shape[0], shape[2], shape[3], shape[1]]}"
        )
    import importlib.metadata

    facts: dict[str, Any] = {  # the version without importing onnx2tf (and TensorFlow) here
        "converter": f"onnx2tf {importlib.metadata.version('onnx2tf')}",
        "from": "torch" if ctx.torch_module is not None else ctx.source.format,
        **onnx_facts,
    }
    return Produced("tflite", ctx.precision, io, "model.tflite", facts)


def _torch_to_onnx(
    ctx: ExportContext, tmp: Path, shape: tuple[int, int, int, int]
) -> tuple[Path, dict[str, Any]]:
    from cvdeploy.export.onnx import torch_to_onnx

    dst = tmp / "model.onnx"
    _, facts = torch_to_onnx(
        ctx.torch_module,
        dst,
        imgsz=(shape[2], shape[3]),
        channels=shape[1],
        batch=max(shape[0], 1),
        dynamic=shape[0] == -1,
        opset=ctx.options.opset,
        simplify=ctx.options.simplify,
    )
    return dst, {f"onnx_{k}": v for k, v in facts.items()}


def fix_input_shape(onnx_file: Path, shape: tuple[int, int, int, int]) -> list[int]:
    """Rewrite an ONNX file in place so its image input has a static height and width.

    The batch stays dynamic when ``shape[0]`` is ``-1``. Intermediate and output shapes
    recorded in the graph are dropped and the graph is constant-folded with onnxslim, so the
    size-dependent parts (anchor grids built from ``Shape`` ops) become constants that
    onnx2tf can convert.

    Returns:
        The input shape written (``-1`` for a dynamic batch).
    """
    import onnx
    import onnxslim

    model = onnx.load(str(onnx_file))
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    for d, v in zip(inp.type.tensor_type.shape.dim, shape, strict=True):
        d.Clear()
        if v == -1:
            d.dim_param = "batch"
        else:
            d.dim_value = int(v)
    del model.graph.value_info[:]
    for out in model.graph.output:
        for d in out.type.tensor_type.shape.dim:
            d.Clear()
    model = onnxslim.slim(onnx.shape_inference.infer_shapes(model))
    onnx.save(model, str(onnx_file))
    return [int(v) for v in shape]


def _run_onnx2tf(
    onnx_file: Path,
    workdir: Path,
    input_name: str,
    shape: tuple[int, ...],
    src_shape: tuple[int, ...],
) -> str:
    cmd = [
        sys.executable,
        "-m",
        "onnx2tf",
        "-i",
        str(onnx_file),
        "-o",
        str(workdir / "out"),
        "-coion",
        "-n",
    ]
    if src_shape[0] == -1 and shape[0] != -1:
        cmd += ["-b", str(shape[0])]
    if -1 in src_shape[2:4]:
        cmd += ["-ois", f"{input_name}:{max(shape[0], 1)},{shape[1]},{shape[2]},{shape[3]}"]
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "-1",
        "TF_ENABLE_ONEDNN_OPTS": "0",
    }
    try:
        res = subprocess.run(
            cmd,
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=CONVERT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelLoadError(f"onnx2tf did not finish within {CONVERT_TIMEOUT_S} s") from exc
    log = (res.stdout or "") + (res.stderr or "")
    if res.returncode != 0:
        raise ModelLoadError(
            f"onnx2tf failed (exit {res.returncode}): {_tail(log)}",
            hint="the graph may use an operator onnx2tf cannot convert",
        )
    return log


def _tail(log: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in log.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-600:] or "(no output)"


def tflite_io(path: Path, source_io: IOSpec) -> IOSpec:
    """Read a TFLite model's NHWC input and its outputs (``-1`` for dynamic dimensions).

    Output names come from the model (onnx2tf copies the ONNX names with ``-coion``).
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"the TFLite model {path.name} cannot be read: {exc}") from exc

    def dims(d: dict[str, Any]) -> tuple[int, ...]:
        sig = d.get("shape_signature")
        arr = sig if sig is not None and len(sig) else d["shape"]
        return tuple(int(v) if int(v) > 0 else -1 for v in arr)

    ins = it.get_input_details()
    outs = it.get_output_details()
    if not ins:
        raise ModelLoadError(f"the TFLite model {path.name} has no input")
    src_names = [o.name for o in source_io.outputs]
    out_specs = []
    for i, d in enumerate(outs):
        name = str(d["name"])
        if name not in src_names:
            name = src_names[i] if i < len(src_names) else f"output{i}"
        out_specs.append(TensorSpec(name=name, shape=dims(d)))
    if sorted(o.name for o in out_specs) == sorted(src_names):
        out_specs.sort(key=lambda o: src_names.index(o.name))
    return IOSpec(
        inputs=(TensorSpec(name=str(ins[0]["name"]), shape=dims(ins[0])),),
        outputs=tuple(out_specs),
        layout="NHWC",
    )


def _temporary(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder named with this process's id; those left by killed processes
    (``kill -9`` gives no chance to clean up) are removed first."""
    sweep_stale(Path(tempfile.gettempdir()), prefix)
    return tempfile.TemporaryDirectory(prefix=pid_prefix(prefix))
