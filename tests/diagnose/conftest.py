"""Fixtures of the doctor tests: a tiny three-convolution detector (ONNX, built here), bundles
of it, images with a colour cast, and a labelled set made from its own predictions."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvdeploy.bundle import Bundle, sha256_file

NC = 3
IMGSZ = 64
NAMES = ("a", "b", "c")


def conv_stack_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Weights of the three convolutions (deterministic)."""
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(0, 0.1, (8,)).astype(np.float32),
        "w2": rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32),
        "b2": rng.normal(0, 0.1, (8,)).astype(np.float32),
        "w3": rng.normal(0, 0.6, (4 + NC, 8, 1, 1)).astype(np.float32),
        "b3": np.concatenate([rng.normal(0, 0.3, 4), np.full(NC, -1.5)]).astype(np.float32),
    }


def conv_stack_onnx(
    path: Path, *, weights: dict[str, np.ndarray] | None = None, branch: bool = False
) -> Path:
    """A YOLOv8-layout detector [1,3,64,64] -> [1, 4+NC, 256]: three convolutions (named
    conv1..conv3), ReLUs, box centres on a 16x16 grid, sigmoid class scores.

    With ``branch``, a fourth convolution ``conv2b`` reads conv1's activation too (one
    tensor, two readers: an INT8 copy quantizes it once for both) and is added to conv2's
    output, and two 1x1 convolutions ``conv2c``, ``conv2d`` follow (so that two faulty
    layers are a minority); their weights are made here when ``weights`` lacks them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = dict(weights or conv_stack_weights())
    if branch and "w2b" not in w:
        rng = np.random.default_rng(1)
        w["w2b"] = rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)
        w["b2b"] = rng.normal(0, 0.1, (8,)).astype(np.float32)
        for k in "cd":
            w[f"w2{k}"] = (np.eye(8) + rng.normal(0, 0.2, (8, 8))).astype(np.float32)[
                :, :, None, None
            ]
            w[f"b2{k}"] = rng.normal(0, 0.1, (8,)).astype(np.float32)
    grid = np.zeros((1, 4 + NC, 16, 16), np.float32)
    ys, xs = np.mgrid[0:16, 0:16]
    grid[0, 0], grid[0, 1] = xs * 4 + 2, ys * 4 + 2
    grid[0, 2:4] = 14.0
    nodes = [
        helper.make_node(
            "Conv", ["images", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node(
            "Conv", ["r1", "w2", "b2"], ["c2"], "conv2", pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        *(
            [
                helper.make_node(
                    "Conv",
                    ["r1", "w2b", "b2b"],
                    ["c2b"],
                    "conv2b",
                    pads=[1, 1, 1, 1],
                    strides=[2, 2],
                ),
                helper.make_node("Add", ["c2", "c2b"], ["c2sum"], "add2"),
                helper.make_node("Relu", ["c2sum"], ["r2a"], "relu2"),
                helper.make_node("Conv", ["r2a", "w2c", "b2c"], ["c2c"], "conv2c"),
                helper.make_node("Relu", ["c2c"], ["r2c"], "relu2c"),
                helper.make_node("Conv", ["r2c", "w2d", "b2d"], ["c2d"], "conv2d"),
                helper.make_node("Relu", ["c2d"], ["r2"], "relu2d"),
            ]
            if branch
            else [helper.make_node("Relu", ["c2"], ["r2"], "relu2")]
        ),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], "conv3"),
        helper.make_node("Add", ["c3", "grid"], ["g"], "grid_add"),
        helper.make_node("Reshape", ["g", "shape"], ["r"], "reshape"),
        helper.make_node("Slice", ["r", "s0", "s4", "ax"], ["box"], "slice_box"),
        helper.make_node("Slice", ["r", "s4", "send", "ax"], ["cls_raw"], "slice_cls"),
        helper.make_node("Sigmoid", ["cls_raw"], ["cls"], "sigmoid"),
        helper.make_node("Concat", ["box", "cls"], ["output0"], "concat", axis=1),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()] + [
        numpy_helper.from_array(grid, "grid"),
        numpy_helper.from_array(np.array([0, 4 + NC, -1], np.int64), "shape"),
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([4], np.int64), "s4"),
        numpy_helper.from_array(np.array([4 + NC], np.int64), "send"),
        numpy_helper.from_array(np.array([1], np.int64), "ax"),
    ]
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, IMGSZ, IMGSZ])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + NC, 256])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def colour_images(folder: Path, n: int, *, seed: int = 0, scale: float = 1.0) -> list[Path]:
    """Non-square images with a warm colour cast (R > G > B on average), as JPEGs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        h, w = (48, 80) if i % 2 == 0 else (80, 56)
        base = np.array([60, 110, 170], np.float32) + rng.normal(0, 12, 3)  # B, G, R
        img = base + rng.normal(0, 25, (h, w, 3))
        for _ in range(3):
            x, y = int(rng.integers(0, w - 12)), int(rng.integers(0, h - 12))
            img[y : y + 12, x : x + 12] = rng.uniform(0, 255, 3)
        img = np.clip(img * scale, 0, 255).astype(np.uint8)
        p = folder / f"img_{i:03d}.jpg"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        out.append(p)
    return out


def add_onnx_artifact(
    bundle_dir: Path, artifact_id: str, model: Path, *, precision: str, source: str
) -> None:
    """Add an ONNX file to a bundle as an artifact made from ``source`` (the manifest edited
    through :meth:`Bundle.edit`, so checksums are right)."""
    from cvdeploy.bundle import Provenance
    from cvdeploy.environment import fingerprint

    b = Bundle.load(bundle_dir)
    src = b.artifact(source)
    with b.edit(action="test-add", details={"artifact": artifact_id}) as edit:
        d = edit.artifact_dir(artifact_id, replace=True)
        shutil.copyfile(model, d / "model.onnx")
        edit.add_artifact(
            artifact_id=artifact_id,
            format="onnx",
            precision=precision,
            io=src.io,
            produced_by=Provenance(tool="test", source=source),
            environment=fingerprint(),
        )


def edit_manifest(bundle_dir: Path, fn: Callable[[dict], None]) -> None:
    """Change bundle.json directly (planting a cause); file checksums stay as they are."""
    mf = bundle_dir / "bundle.json"
    data = json.loads(mf.read_text())
    fn(data)
    mf.write_text(json.dumps(data, indent=2))


def rehash(bundle_dir: Path) -> None:
    """Record the current checksums of every artifact file (after planting a file change)."""

    def fix(d: dict) -> None:
        for a in d["artifacts"]:
            for f in a["files"]:
                p = bundle_dir / f["path"]
                f["sha256"], f["size"] = sha256_file(p), p.stat().st_size

    edit_manifest(bundle_dir, fix)


def pseudo_labelled(bundle_dir: Path, images: list[Path], out: Path) -> Path:
    """A YOLO dataset labelled with the bundle's own FP32 detections (so the FP32 model
    scores well and a damaged artifact measurably worse)."""
    from cvdeploy.data.io import read_image
    from cvdeploy.pipeline import Predictor

    b = Bundle.load(bundle_dir)
    (out / "images" / "val").mkdir(parents=True, exist_ok=True)
    (out / "labels" / "val").mkdir(parents=True, exist_ok=True)
    with Predictor.from_bundle(b, "onnx-fp32", batch=1) as p:
        for src in images:
            img = read_image(src)
            (res,), _ = p.predict_batch([img])
            h, w = img.shape[:2]
            lines = []
            for (x1, y1, x2, y2), c in zip(res.boxes.tolist(), res.class_ids.tolist(), strict=True):
                cx, cy = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
                lines.append(f"{c} {cx:.6f} {cy:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n")
            shutil.copyfile(src, out / "images" / "val" / src.name)
            (out / "labels" / "val" / f"{src.stem}.txt").write_text("".join(lines))
    (out / "data.yaml").write_text("path: .\nval: images/val\nnames: [" + ", ".join(NAMES) + "]\n")
    return out / "data.yaml"


@pytest.fixture(scope="session")
def stack_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the three-convolution detector (``onnx-fp32``), 48 images, a labelled set
    made from its predictions. Tests copy the bundle before changing it."""
    pytest.importorskip("onnxruntime")
    from cvdeploy.export import ImportOverrides, import_model

    root = tmp_path_factory.mktemp("stack")
    model = conv_stack_onnx(root / "stack.onnx")
    import_model(
        model,
        out=root / "bundle",
        overrides=ImportOverrides(decoder="yolov8", names=NAMES, imgsz=(IMGSZ, IMGSZ)),
    )
    imgs = colour_images(root / "images", 48)
    pseudo_labelled(root / "bundle", imgs, root / "data")
    return root


@pytest.fixture()
def stack(stack_root: Path, tmp_path: Path) -> Path:
    """A fresh copy of the three-convolution bundle."""
    dst = tmp_path / "bundle"
    shutil.copytree(stack_root / "bundle", dst)
    return dst
