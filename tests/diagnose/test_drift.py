"""The drift reference in the bundle, and windows compared with it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvdeploy.bundle import Bundle
from cvdeploy.diagnose import (
    FeatureTable,
    ImageSource,
    ReferenceSummary,
    collect,
    compare,
    load_reference,
    record_reference,
)
from cvdeploy.errors import IntegrityError, UsageError
from tests.diagnose.conftest import colour_images

pytest.importorskip("scipy")


def test_record_reference_stores_a_summary_checked_by_sha256(stack: Path, stack_root: Path) -> None:
    b = Bundle.load(stack)
    rec = record_reference(b, stack_root / "data" / "data.yaml", progress=False)
    assert rec.images == 48 and rec.file.startswith("reference/") and rec.embedding_layer
    b = Bundle.load(stack)  # the manifest still loads (typed 'reference' check)
    check = b.artifact("onnx-fp32").latest("reference")
    assert check is not None and check.data.images == 48 and check.data.embedding_dims
    ref = load_reference(b)
    assert ref is not None and len(ref.table) == 48 and ref.table.embeddings is not None
    assert "brightness" in ref.table.names and "detections" in ref.table.names
    # recorded again: replaced, never written through the old bundle's hard link
    record_reference(b, stack_root / "data" / "data.yaml", progress=False, max_images=20)
    assert load_reference(Bundle.load(stack)).table.values.shape[0] == 20  # type: ignore[union-attr]
    f = stack / check.data.file
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(IntegrityError, match="altered"):
        load_reference(Bundle.load(stack))


def test_a_bundle_written_before_loads_without_reference(stack: Path) -> None:
    assert load_reference(Bundle.load(stack)) is None
    data = json.loads((stack / "bundle.json").read_text())
    assert all(c["kind"] != "reference" for a in data["artifacts"] for c in a["checks"])


def _table(stack: Path, tmp: Path, *, scale: float, seed: int, n: int = 40) -> FeatureTable:
    b = Bundle.load(stack)
    paths = colour_images(tmp / f"s{seed}-{scale}", n, seed=seed, scale=scale)
    table, _ = collect(b, [ImageSource(id=p.name, path=p) for p in paths])
    return table


def test_a_window_from_the_same_source_is_not_drift_and_a_darker_one_is(
    stack: Path, tmp_path: Path
) -> None:
    ref = ReferenceSummary.from_table(_table(stack, tmp_path, scale=1.0, seed=0, n=200), {})
    same = _table(stack, tmp_path, scale=1.0, seed=1, n=80)
    dark = _table(stack, tmp_path, scale=0.6, seed=2)
    r0 = compare(ref, same)
    assert r0.verdict == "no drift detected", r0.drifted
    r1 = compare(ref, dark)
    assert r1.verdict == "drift" and r1.p_value <= 0.05
    assert "ks:brightness" in r1.drifted and r1.embeddings
    assert r1.test("mmd") is not None


def test_a_small_window_is_too_small_to_tell(stack: Path, tmp_path: Path) -> None:
    ref = ReferenceSummary.from_table(_table(stack, tmp_path, scale=1.0, seed=0, n=60), {})
    few = _table(stack, tmp_path, scale=1.0, seed=3, n=8)
    r = compare(ref, few)
    assert r.verdict == "too small to tell" and r.window_needed and r.window_needed > 8
    with pytest.raises(UsageError):
        compare(ref, few.subset([]))


def test_images_in_memory_and_logged_results(stack: Path, tmp_path: Path) -> None:
    from cvdeploy.pipeline import Detections

    b = Bundle.load(stack)
    p = colour_images(tmp_path / "m", 1)[0]
    img = cv2.imread(str(p))
    det = Detections(
        boxes=np.array([[0, 0, 8, 8]], np.float32), scores=np.array([0.9]), class_ids=np.array([1])
    )
    t, _ = collect(
        b,
        [ImageSource(id="x", image=img, data=p.read_bytes(), result=det)],
        embeddings=False,
    )
    assert t.column("detections")[0] == 1 and t.classes[0].tolist() == [0, 1, 0]
    assert t.embeddings is None
