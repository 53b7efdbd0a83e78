"""Tiny models built in the test session (no downloads): ONNX via onnx.helper, torch modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np

NC = 3
IMGSZ = 64
N_ANCHORS = (IMGSZ // 8) ** 2


def conv_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the tiny detector's single conv (4+NC outputs, 8x8 kernel, stride 8)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, size=(4 + NC, 3, 8, 8)).astype(np.float32)
    b = rng.normal(0, 0.1, size=(4 + NC,)).astype(np.float32)
    b[:4] = [32.0, 32.0, 16.0, 16.0]  # boxes around the centre, in input pixels
    return w, b


def tiny_detector_onnx(path: Path, *, batch: int | str = "batch", seed: int = 0) -> Path:
    """A YOLOv8-layout detector: [B,3,64,64] -> [B, 4+NC, 64] (class rows after sigmoid)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = conv_weights(seed)
    nodes = [
        helper.make_node("Conv", ["images", "w", "b"], ["c"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("Slice", ["r", "s0", "s4", "ax"], ["box"]),
        helper.make_node("Slice", ["r", "s4", "send", "ax"], ["cls_raw"]),
        helper.make_node("Sigmoid", ["cls_raw"], ["cls"]),
        helper.make_node("Concat", ["box", "cls"], ["output0"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(np.array([0, 4 + NC, -1], dtype=np.int64), "shape"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "s0"),
        numpy_helper.from_array(np.array([4], dtype=np.int64), "s4"),
        numpy_helper.from_array(np.array([4 + NC], dtype=np.int64), "send"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "ax"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, IMGSZ, IMGSZ])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 4 + NC, N_ANCHORS])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_detector_torch():  # type: ignore[no-untyped-def]
    """The same detector as a torch module (factory used by torch checkpoints in tests)."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4 + NC, 8, stride=8)
            w, b = conv_weights(0)
            with torch.no_grad():
                self.conv.weight.copy_(torch.from_numpy(w))
                self.conv.bias.copy_(torch.from_numpy(b))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            r = self.conv(x).flatten(2)
            return torch.cat([r[:, :4], r[:, 4:].sigmoid()], 1)

    return Tiny().eval()


def tiny_spec_dict() -> dict:
    """A spec for the tiny detector (yaml/json-able)."""
    return {
        "task": "detect",
        "names": [f"c{i}" for i in range(NC)],
        "imgsz": [IMGSZ, IMGSZ],
        "preprocess": {
            "resize": "letterbox",
            "align": "center",
            "pad_value": 114,
            "color": "rgb",
            "scale": 1 / 255,
        },
        "decoder": {"kind": "yolov8", "conf": 0.25, "iou": 0.7, "max_det": 100},
        "stride": 32,
    }


def write_image(path: Path, h: int = 48, w: int = 80, seed: int = 0) -> Path:
    """A random-ish colour image written with OpenCV."""
    import cv2

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    cv2.rectangle(img, (10, 10), (w - 10, h - 10), (0, 200, 0), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path
