"""TFLite backend: the LiteRT interpreter (``ai_edge_litert``), NHWC input.

A dynamic batch is served by resizing the interpreter's input tensor when the batch
changes; the base class has already refused shapes the artifact's IOSpec does not allow.
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from cvdeploy.errors import ModelLoadError
from cvdeploy.runtime.base import Runner, reject_unknown

_KNOWN: set[str] = set()


class TfliteRunner(Runner):
    """Runs a ``.tflite`` model with the LiteRT interpreter (CPU, XNNPACK)."""

    format = "tflite"
    supports_bytes = True

    def _load(self) -> None:
        reject_unknown(dict(self.options.extra), _KNOWN, "tflite")
        if self.model_bytes is None and not self.model_path.is_file():
            raise ModelLoadError(f"model file {self.model_path} does not exist")
        try:
            if self.model_bytes is not None:
                it = Interpreter(model_content=self.model_bytes, num_threads=self.options.threads)
            else:
                it = Interpreter(model_path=str(self.model_path), num_threads=self.options.threads)
            it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"the TFLite interpreter could not load {self.model_path.name}: {first}",
                hint="the file may be corrupted or not a TFLite model; re-export it",
            ) from exc
        self.interpreter = it
        self._input = it.get_input_details()[0]
        details = it.get_output_details()
        by_name = {str(d["name"]): int(d["index"]) for d in details}
        names = [o.name for o in self.io.outputs]
        if names and all(n in by_name for n in names):
            self._outputs = [by_name[n] for n in names]
        else:
            self._outputs = [int(d["index"]) for d in details]
        self._shape: tuple[int, ...] = tuple(int(v) for v in self._input["shape"])

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        it = self.interpreter
        idx = int(self._input["index"])
        if tuple(x.shape) != self._shape:
            it.resize_tensor_input(idx, list(x.shape), strict=True)
            it.allocate_tensors()
            self._shape = tuple(x.shape)
        it.set_tensor(idx, np.ascontiguousarray(x))
        it.invoke()
        return [np.array(it.get_tensor(i)) for i in self._outputs]

    def _close(self) -> None:
        del self.interpreter
