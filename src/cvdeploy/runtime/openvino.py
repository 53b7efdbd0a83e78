"""OpenVINO backend."""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov

from cvdeploy.errors import ModelLoadError
from cvdeploy.runtime.base import Runner, reject_unknown

_KNOWN = {
    "PERFORMANCE_HINT",
    "NUM_STREAMS",
    "INFERENCE_PRECISION_HINT",
    "ENABLE_HYPER_THREADING",
    "PERF_COUNT",
    "device_name",
}


def compile_config(threads: int | None, extra: dict[str, Any]) -> dict[str, Any]:
    """OpenVINO compile-time properties from runner options."""
    reject_unknown(extra, _KNOWN, "openvino")
    cfg: dict[str, Any] = {k: v for k, v in extra.items() if k != "device_name"}
    cfg.setdefault("PERFORMANCE_HINT", "LATENCY")
    if threads is not None:
        cfg["INFERENCE_NUM_THREADS"] = threads
    return cfg


class OpenVinoRunner(Runner):
    """Runs an OpenVINO IR (``.xml`` + ``.bin``) or an ONNX file with OpenVINO."""

    format = "openvino"
    supports_bytes = True

    def _load(self) -> None:
        extra = dict(self.options.extra)
        cfg = compile_config(self.options.threads, extra)
        device = str(
            extra.get("device_name", "GPU" if self.options.device in ("gpu", "cuda") else "CPU")
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
