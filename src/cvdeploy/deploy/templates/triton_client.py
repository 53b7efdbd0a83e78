"""Client of the Triton model repository written by `cvdeploy package --target triton`.

cvdeploy's preprocessing (letterbox, colour order, scale) and decoding + NMS run here, in the
client, with the bundle's spec (spec.json beside this file); Triton runs only the model.
(Preprocessing in Triton's Python backend is the known slow path.)

    from cvdeploy_triton_client import TritonPredictor
    with TritonPredictor.from_dir(".", url="127.0.0.1:8000") as p:
        results, times = p.predict([cv2.imread("picture.jpg")])

Needs `pip install 'cvdeploy[onnxruntime]' 'tritonclient[http]'` (cvdeploy for the pipeline;
no runtime is loaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.pipeline import Predictor
from cvdeploy.spec import IOSpec, ModelSpec

_TRITON_DTYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8", "int8": "INT8"}


class TritonRunner:
    """A cvdeploy runner whose inference is a call to Triton (HTTP)."""

    def __init__(self, url: str, model: str, io: IOSpec, *, timeout_s: float = 30.0) -> None:
        self.url = url
        self.model = model
        self.io = io
        self.timeout_s = timeout_s
        self.effective_precision = "server"
        self._client: Any = None

    def load(self) -> None:
        import tritonclient.http as http

        self._client = http.InferenceServerClient(
            self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
        )

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        import tritonclient.http as http

        if self._client is None:
            self.load()
        spec = self.io.input
        inp = http.InferInput(spec.name, list(x.shape), _TRITON_DTYPES[spec.dtype])
        inp.set_data_from_numpy(np.ascontiguousarray(x))
        wanted = [http.InferRequestedOutput(o.name, binary_data=True) for o in self.io.outputs]
        res = self._client.infer(self.model, [inp], outputs=wanted)
        return [res.as_numpy(o.name) for o in self.io.outputs]

    def describe(self) -> dict[str, Any]:
        return {"backend": "triton", "url": self.url, "model": self.model}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class TritonPredictor(Predictor):
    """cvdeploy's Predictor with Triton as its runner."""

    @classmethod
    def from_dir(
        cls, directory: str | Path = ".", *, url: str = "127.0.0.1:8000"
    ) -> TritonPredictor:
        info = json.loads((Path(directory) / "spec.json").read_text(encoding="utf-8"))
        io = IOSpec.model_validate(info["io"])
        runner = TritonRunner(url, info["model"], io)
        return cls(
            spec=ModelSpec.model_validate(info["spec"]),
            runner=runner,  # type: ignore[arg-type]
            artifact_id=f"triton:{info['model']}",
            batch=int(info["max_batch"]) or 1,
        )
