"""Helpers for the protected-model tests: tiny bundles, keys, CLI runs, manifest surgery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle, Provenance, sha256_file
from cvdeploy.export.importer import ImportOverrides, import_model
from tests.tiny_models import NC, tiny_detector_onnx, write_image

NAMES = tuple(f"n{i}" for i in range(NC))


def images(root: Path, n: int = 3) -> list[Path]:
    """A few small colour images."""
    return [write_image(root / f"{i}.jpg", h=56 + 8 * i, w=80, seed=i) for i in range(n)]


def make_bundle(root: Path, *, seed: int = 0, name: str = "tiny") -> Path:
    """A bundle of the tiny detector (dynamic batch) with sample images."""
    root.mkdir(parents=True, exist_ok=True)
    src = tiny_detector_onnx(root / f"{name}.onnx", seed=seed)
    import_model(
        src,
        out=root / "bundle",
        overrides=ImportOverrides(decoder="yolov8", names=NAMES),
        samples=images(root / "imgs"),
    )
    return root / "bundle"


def add_copy(bundle_dir: Path, src_id: str, new_id: str, *, fmt: str | None = None) -> None:
    """Add a byte-identical copy of an artifact under another id (optionally another format)."""
    b = Bundle.load(bundle_dir)
    art = b.artifact(src_id)
    with b.edit(action="test-copy") as edit:
        d = edit.artifact_dir(new_id)
        for ref in art.files:
            shutil.copyfile(b.file(ref), d / Path(ref.path).name)
        edit.add_artifact(
            artifact_id=new_id,
            format=fmt or art.format,
            precision=art.precision,
            io=art.io,
            produced_by=Provenance(tool="test-copy", source=src_id),
            main_file=Path(art.files[0].path).name,
        )


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle_dir / "bundle.json").read_text())
    return data


def write_manifest(bundle_dir: Path, data: dict[str, Any]) -> None:
    (bundle_dir / "bundle.json").write_text(json.dumps(data, indent=2))


def rehash(bundle_dir: Path) -> None:
    """Make the manifest's sha256/size agree with the files again (what an attacker would do)."""
    data = read_manifest(bundle_dir)
    for a in data["artifacts"]:
        for f in a["files"]:
            p = bundle_dir / f["path"]
            f["sha256"], f["size"] = sha256_file(p), p.stat().st_size
    write_manifest(bundle_dir, data)


def flip_byte(path: Path, offset: int = -20) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def cli(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI; never a traceback."""
    from cvdeploy.cli.main import app

    res = CliRunner().invoke(app, args, env=env)
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def detections(bundle: Bundle, artifact: str, imgs: list[Path], **kw: Any) -> list[Any]:
    """(boxes, scores, classes) per image through the full predictor."""
    from cvdeploy.data.io import read_image
    from cvdeploy.pipeline.predictor import Predictor

    with Predictor.from_bundle(bundle, artifact, batch=1, **kw) as p:
        res, _ = p.predict([read_image(i) for i in imgs])
    return [(np.round(r.boxes, 3), np.round(r.scores, 5), r.class_ids) for r in res]
