"""report.html is built from the manifest and embeds the images."""

from __future__ import annotations

from pathlib import Path

import yaml

from cvdeploy.bundle import Bundle, Check
from cvdeploy.export import ExportOptions, export_model
from cvdeploy.report.html import artifact_row, write_report
from tests.tiny_models import tiny_spec_dict, write_image


def test_report_from_manifest(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(tiny_spec_dict()))
    img = write_image(tmp_path / "imgs" / "a.jpg")
    export_model(
        "tests.tiny_models:tiny_detector_torch",
        formats=["onnx"],
        out=tmp_path / "b",
        spec_file=tmp_path / "spec.yaml",
        data=tmp_path / "imgs",
        options=ExportOptions(),
    )
    b = Bundle.load(tmp_path / "b")
    with b.edit(action="eval") as edit:
        edit.add_check(
            "onnx-fp32",
            Check(
                kind="metrics",
                name="ds",
                data={
                    "metrics": {"map50_95": 0.4321, "map50": 0.6543},
                    "speed_ms": {"decode": 1, "preprocess": 1, "inference": 5, "postprocess": 1},
                },
            ),
        )
    row = artifact_row(b.artifact("onnx-fp32"), "ds")
    assert row["map50_95"] == 0.4321 and row["e2e_ms"] == 8 and row["parity"] is True
    out = write_report(b, tmp_path / "r" / "report.html", dataset="ds", images=[img])
    text = out.read_text()
    assert "0.4321" in text and "onnx-fp32" in text and "torch-fp32" in text
    assert "data:image/jpeg;base64," in text
    assert "pass" in text
