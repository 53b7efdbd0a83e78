"""ONNX Runtime backend (FP32 compute, pinned).

ONNX Runtime's CPU provider computes FP32 models in FP32 on x86; on ARM64 its MLAS GEMMs can
be switched to bf16 "fast math" by a session option, which the runner sets off explicitly,
so an FP32 artifact computes in FP32 on every CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from cvdeploy.errors import ModelLoadError, UsageError
from cvdeploy.runtime.base import Runner, reject_unknown

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_KNOWN = {
    "allow_spinning",
    "graph_optimization_level",
    "inter_op_threads",
    "execution_mode",
    "profile_dir",
    "providers",
}


def session_options(threads: int | None, extra: dict[str, Any]) -> ort.SessionOptions:
    """Build ONNX Runtime session options from runner options."""
    reject_unknown(extra, _KNOWN, "onnxruntime")
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
    if "inter_op_threads" in extra:
        so.inter_op_num_threads = int(extra["inter_op_threads"])
    level = extra.get("graph_optimization_level", "all")
    if level not in _LEVELS:
        raise UsageError(f"graph_optimization_level must be one of {sorted(_LEVELS)}")
    so.graph_optimization_level = _LEVELS[level]
    mode = extra.get("execution_mode", "sequential")
    if mode not in ("sequential", "parallel"):
        raise UsageError("execution_mode must be 'sequential' or 'parallel'")
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    if extra.get("profile_dir"):
        so.enable_profiling = True
        so.profile_file_prefix = str(extra["profile_dir"]) + "/ort_profile"
    so.log_severity_level = 3
    if not extra.get("allow_spinning", True):
        # idle worker threads sleep instead of spinning after a run: what a process that
        # runs torch between inferences (a distillation teacher) needs, or the spinning
        # threads take the cores torch's own threads are waiting for
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Explicit, although off by default: never bf16 fast-math GEMMs for an FP32 artifact.
    so.add_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16", "0")
    return so


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX model with ONNX Runtime (CPU, or CUDA with ``device='cuda'``)."""

    format = "onnx"
    supports_bytes = True

    def _load(self) -> None:
        extra = dict(self.options.extra)
        so = session_options(self.options.threads, extra)
        if self.options.device in ("cuda", "gpu"):
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UsageError(
                    "ONNX Runtime here has no CUDA provider",
                    hint="pip install onnxruntime-gpu, or use device cpu",
                )
        else:
            providers = list(extra.get("providers", ["CPUExecutionProvider"]))
        source: str | bytes = (
            self.model_bytes if self.model_bytes is not None else str(self.model_path)
        )
        if self.model_bytes is None and not self.model_path.is_file():
            raise ModelLoadError(f"model file {self.model_path} does not exist")
        try:
            self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(
                f"ONNX Runtime could not load {self.model_path.name}: {exc}".splitlines()[0],
                hint="the file may be corrupted or not an ONNX model; re-export it",
            ) from exc
        self._input_name = self.session.get_inputs()[0].name
        self._output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(self._output_names, {self._input_name: x}))

    def end_profiling(self) -> str | None:
        """Stop profiling and return the trace file (when ``profile_dir`` was set)."""
        if self.options.extra.get("profile_dir"):
            return str(self.session.end_profiling())
        return None

    def _close(self) -> None:
        del self.session
