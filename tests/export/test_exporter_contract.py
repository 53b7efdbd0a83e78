"""The Exporter contract, run against every registered exporter on the same tiny model.

For each target and each precision it can produce on this machine: the artifact passes the
parity gate against its source, is recorded with its format, precision and inference
precision, and runs through the runner registered for its format. A target that cannot run
here (TensorRT without a GPU, a missing package, a precision this CPU lacks) is refused
before anything is written, with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.errors import BackendUnavailable
from cvdeploy.export import EXPORTERS, PRECISIONS, export_model
from cvdeploy.precision import inference_precision_for
from cvdeploy.runtime import create_runner
from tests.cpu import native
from tests.export.test_targets import _images, _ultra_onnx

CASES = [
    pytest.param(fmt, prec, marks=[pytest.mark.slow] if fmt == "tflite" else [])
    for fmt in EXPORTERS.names()
    for prec in PRECISIONS[fmt]
    if not (fmt == "onnx" or prec.startswith("int8"))  # onnx: from torch; int8: quantize first
]


@pytest.mark.parametrize(("fmt", "prec"), CASES)
def test_exporter_contract(fmt: str, prec: str, tmp_path: Path) -> None:
    src = _ultra_onnx(tmp_path / "m.onnx")
    computes = inference_precision_for(fmt, prec)
    reason = EXPORTERS.availability(fmt).reason
    if reason is not None or (fmt != "tensorrt" and computes not in native()):
        with pytest.raises(BackendUnavailable):
            export_model(
                src, formats=[f"{fmt}:{prec}"], out=tmp_path / "b", data=_images(tmp_path / "i")
            )
        assert not (tmp_path / "b").exists()  # refused before anything was written
        return
    rep = export_model(
        src, formats=[f"{fmt}:{prec}"], out=tmp_path / "b", data=_images(tmp_path / "i")
    )
    assert rep.ok, [o.message for o in rep.outcomes]
    b = Bundle.load(tmp_path / "b")
    art = b.artifact(f"{fmt}-{prec}")
    assert (art.format, art.precision, art.inference_precision) == (fmt, prec, computes)
    par = art.latest("parity")
    assert par is not None and par.passed and par.data.precision == prec
    assert par.data.inference_precision == computes
    assert art.produced_by.source == "onnx-fp32"
    shape = tuple(1 if d == -1 else d for d in art.io.input.shape)
    with create_runner(fmt, b.model_file(art), art.io, inference_precision=computes) as r:
        outs = r.run(np.zeros(shape, np.float32))
    assert len(outs) == len(art.io.outputs)
    for out, spec in zip(outs, art.io.outputs, strict=True):  # what the manifest says it emits
        assert out.ndim == len(spec.shape)
        assert all(want in (-1, got) for want, got in zip(spec.shape, out.shape, strict=True))
