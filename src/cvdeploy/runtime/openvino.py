"""OpenVINO backend, pinned to the artifact's inference precision.

OpenVINO's CPU plugin picks its own ``INFERENCE_PRECISION_HINT`` when none is given: bf16 on
CPUs with native bf16 (AVX512_BF16, AMX), f16 on ARM. The runner always sets it: to the
artifact's recorded precision (``f32`` for FP32 and INT8 artifacts), or to an explicit
``INFERENCE_PRECISION_HINT`` option (a tuned configuration). bf16/f16 are refused on CPUs
without native arithmetic in them, and the precision the compiled model reports is checked
against the one asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov

from cvdeploy.errors import BackendUnavailable, ModelLoadError
from cvdeploy.precision import check_inference_precision, require_native
from cvdeploy.runtime.base import Runner, reject_unknown

_KNOWN = {
    "PERFORMANCE_HINT",
    "NUM_STREAMS",
    "INFERENCE_PRECISION_HINT",
    "ENABLE_HYPER_THREADING",
    "PERF_COUNT",
    "device_name",
}


def compile_config(
    threads: int | None, extra: dict[str, Any], *, precision: str = "f32"
) -> dict[str, Any]:
    """OpenVINO compile-time properties from runner options.

    ``INFERENCE_PRECISION_HINT`` is always set: the explicit option when given, else
    ``precision`` (the artifact's).
    """
    reject_unknown(extra, _KNOWN, "openvino")
    cfg: dict[str, Any] = {k: v for k, v in extra.items() if k != "device_name"}
    cfg.setdefault("PERFORMANCE_HINT", "LATENCY")
    cfg["INFERENCE_PRECISION_HINT"] = check_inference_precision(
        str(cfg.get("INFERENCE_PRECISION_HINT", precision))
    )
    if threads is not None:
        cfg["INFERENCE_NUM_THREADS"] = threads
    return cfg


def type_name(t: Any) -> str:
    """``f32``/``bf16``/``f16`` for an ``openvino.Type`` (or its name)."""
    name = t.get_type_name() if hasattr(t, "get_type_name") else str(t)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


class OpenVinoRunner(Runner):
    """Runs an OpenVINO IR (``.xml`` + ``.bin``) or an ONNX file with OpenVINO."""

    format = "openvino"
    supports_bytes = True
    inference_precisions = frozenset({"f32", "bf16", "f16"})

    def _load(self) -> None:
        extra = dict(self.options.extra)
        cfg = compile_config(self.options.threads, extra, precision=self.inference_precision)
        device = str(
            extra.get("device_name", "GPU" if self.options.device in ("gpu", "cuda") else "CPU")
        )
        asked = str(cfg["INFERENCE_PRECISION_HINT"])
        explicit = "INFERENCE_PRECISION_HINT" in extra
        require_native(
            asked,
            what=f"{self.model_path.parent.name or self.model_path.name} "
            + ("(INFERENCE_PRECISION_HINT option)" if explicit else "(its recorded precision)"),
            device="cpu" if device.upper().startswith("CPU") else device,
        )
        self.core = ov.Core()
        try:
            if self.model_bytes is not None:
                # From memory (decrypted): the IR's XML plus its weights as a tensor.
                weights = np.frombuffer(self.weights_bytes or b"", dtype=np.uint8)
                model = self.core.read_model(model=self.model_bytes, weights=ov.Tensor(weights))
            elif not self.model_path.is_file():
                raise ModelLoadError(f"model file {self.model_path} does not exist")
            else:
                model = self.core.read_model(str(self.model_path))
            self.compiled = self.core.compile_model(model, device, cfg)
        except ModelLoadError:
            raise
        except Exception as exc:  # openvino raises RuntimeError with long messages
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"OpenVINO could not load {self.model_path.name}: {first}",
                hint="the .xml/.bin pair may be corrupted or mismatched; re-export it",
            ) from exc
        got = type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if got != asked:
            raise BackendUnavailable(
                f"OpenVINO compiled {self.model_path.name} for {got} when {asked} was asked "
                f"on {device}",
                hint="this device cannot run that precision; use an fp32 artifact",
            )
        self.effective_precision = got
        self.request = self.compiled.create_infer_request()
        self._outputs = list(self.compiled.outputs)

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        res = self.request.infer({0: x}, share_inputs=True)
        return [np.array(res[o]) for o in self._outputs]

    def perf_counts(self) -> list[dict[str, Any]]:
        """Per-operator timings of the last inference (needs ``PERF_COUNT=True``)."""
        return [
            {
                "name": p.node_name,
                "type": p.node_type,
                "exec_type": p.exec_type,
                "real_time_us": p.real_time.total_seconds() * 1e6,
            }
            for p in self.request.profiling_info
        ]

    def _close(self) -> None:
        del self.request, self.compiled, self.core
