"""Runtimes: one :class:`~cvdeploy.runtime.base.Runner` per backend, registered by format.

Heavy imports (onnxruntime, openvino, torch, tensorrt) happen only when a runner is
requested, so ``import cvdeploy.runtime`` works with any subset installed.
"""

from __future__ import annotations

from pathlib import Path

from cvdeploy.registry import Registry
from cvdeploy.runtime.base import Runner, RunnerOptions
from cvdeploy.runtime.tensorrt import tensorrt_unavailable
from cvdeploy.spec import IOSpec

RUNTIMES = Registry("runtime")
RUNTIMES.register(
    "onnx",
    "cvdeploy.runtime.onnxruntime:OnnxRuntimeRunner",
    requires=("onnxruntime",),
    extra="onnxruntime",
    description="ONNX Runtime (CPU; CUDA with onnxruntime-gpu)",
)
RUNTIMES.register(
    "openvino",
    "cvdeploy.runtime.openvino:OpenVinoRunner",
    requires=("openvino",),
    extra="openvino",
    description="OpenVINO IR on Intel CPUs/GPUs",
)
RUNTIMES.register(
    "torch",
    "cvdeploy.runtime.torch:TorchRunner",
    requires=("torch",),
    extra="torch",
    description="PyTorch checkpoint (export source)",
)
RUNTIMES.register(
    "tflite",
    "cvdeploy.runtime.tflite:TfliteRunner",
    requires=("ai_edge_litert",),
    extra="tflite",
    description="TFLite / LiteRT interpreter (CPU, XNNPACK), NHWC input",
)
RUNTIMES.register(
    "tensorrt",
    "cvdeploy.runtime.tensorrt:TensorRTRunner",
    extra="tensorrt",
    description="TensorRT engine (NVIDIA GPU)",
    check=tensorrt_unavailable,
)


def create_runner(
    format: str,
    model_path: Path,
    io: IOSpec,
    *,
    options: RunnerOptions | None = None,
    model_bytes: bytes | None = None,
    weights_bytes: bytes | None = None,
    inference_precision: str = "f32",
) -> Runner:
    """Create (not load) the runner registered for ``format`` (see :class:`Runner`).

    ``inference_precision`` is what the artifact computes in (its manifest's
    :attr:`~cvdeploy.bundle.Artifact.runtime_precision`); the default pins FP32.
    """
    cls = RUNTIMES.get(format)
    runner: Runner = cls(
        model_path,
        io,
        options=options,
        model_bytes=model_bytes,
        weights_bytes=weights_bytes,
        inference_precision=inference_precision,
    )
    return runner


__all__ = ["RUNTIMES", "Runner", "RunnerOptions", "create_runner"]
