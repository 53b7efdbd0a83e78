"""Zoo architectures: output layouts, config scaling, ONNX export parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cvdeploy.errors import UsageError
from cvdeploy.zoo.models import (
    CLASSIFIER_CONFIGS,
    DETECTOR_CONFIGS,
    Detector,
    available_models,
    build_model,
    make_anchors,
    model_task,
)


def _n_anchors(h: int, w: int) -> int:
    return sum((h // s) * (w // s) for s in (8, 16, 32))


@pytest.mark.parametrize("name", ["detector-n", "detector-s"])
@pytest.mark.parametrize(("batch", "h", "w"), [(1, 128, 128), (2, 256, 256), (1, 256, 320)])
def test_detector_eval_output_layout(name: str, batch: int, h: int, w: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.rand(batch, 3, h, w))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (batch, 4 + 5, _n_anchors(h, w))
    scores = out[:, 4:]
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
    assert float(out[:, 2:4].min()) >= 0.0  # widths and heights are non-negative


def test_detector_train_output_is_raw_maps() -> None:
    model = build_model("detector-n", num_classes=3).train()
    assert isinstance(model, Detector)
    outs = model(torch.rand(2, 3, 128, 160))
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [
        (2, 4 * 16 + 3, 128 // s, 160 // s) for s in (8, 16, 32)
    ]


def test_detector_boxes_follow_anchor_grid() -> None:
    """With zero box logits every side is the mean bin, so centres are the anchor centres."""
    model = build_model("detector-n", num_classes=2).eval()
    assert isinstance(model, Detector)
    for box in model.head.box:
        torch.nn.init.zeros_(box[-1].weight)
        torch.nn.init.zeros_(box[-1].bias)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    points, strides = make_anchors(
        [(8, 12), (4, 6), (2, 3)], (8, 16, 32), dtype=torch.float32, device=torch.device("cpu")
    )
    expected_centres = (points * strides).T
    torch.testing.assert_close(out[0, :2], expected_centres)
    # row-major, stride 8 first: anchor 1 is one cell to the right of anchor 0
    assert out[0, 0, 1] - out[0, 0, 0] == pytest.approx(8.0)
    mean_bin = (16 - 1) / 2
    torch.testing.assert_close(out[0, 2], 2 * mean_bin * strides[:, 0])


def test_detector_sizes_scale_with_config() -> None:
    n = build_model("detector-n", num_classes=6)
    s = build_model("detector-s", num_classes=6)
    pn = sum(p.numel() for p in n.parameters())
    ps = sum(p.numel() for p in s.parameters())
    assert 0.5e6 < pn < 4e6
    assert ps > 2 * pn
    assert DETECTOR_CONFIGS["detector-n"].channels()[0] == 16


@pytest.mark.parametrize("batch", [1, 4])
def test_classifier_logits(batch: int) -> None:
    model = build_model("classifier-n", num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.rand(batch, 3, 64, 64))
    assert out.shape == (batch, 7)
    assert "classifier-n" in CLASSIFIER_CONFIGS


def test_registry_of_names() -> None:
    assert available_models() == ["classifier-n", "detector-n", "detector-p", "detector-s"]
    assert model_task("detector-s") == "detect"
    assert model_task("classifier-n") == "classify"
    with pytest.raises(UsageError, match="detector-n"):
        build_model("detector-xl", num_classes=3)
    with pytest.raises(UsageError):
        build_model("detector-n", num_classes=0)


@pytest.mark.parametrize("name", ["detector-n", "classifier-n"])
def test_onnx_export_parity_dynamic_batch(name: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = build_model(name, num_classes=4).eval()
    size = 128 if name.startswith("detector") else 64
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        (torch.rand(1, 3, size, size),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.rand(batch, 3, size, size)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(["output0"], {"images": x.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)
