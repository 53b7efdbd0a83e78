"""`cvdeploy registry rollback` re-checks parity of the version it puts back, before it does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from cvdeploy.bundle import Bundle, Provenance
from cvdeploy.cli.main import app
from cvdeploy.serve.registry import ModelRegistry
from cvdeploy.verify import recheck_parity
from tests.serve.conftest import make_bundle
from tests.tiny_models import tiny_detector_onnx, write_image


def _with_derived(bundle: Path, tmp: Path, *, model_seed: int) -> Path:
    """Add samples and an artifact 'derived' from onnx-fp32, served by default."""
    b = Bundle.load(bundle)
    imgs = [write_image(tmp / f"s{i}.jpg", h=64, w=96, seed=i) for i in range(3)]
    with b.edit(action="export", details={}) as e:
        e.add_samples(imgs)
        d = e.artifact_dir("onnx-derived")
        tiny_detector_onnx(d / "model.onnx", seed=model_seed)
        e.add_artifact(
            artifact_id="onnx-derived",
            format="onnx",
            precision="fp32",
            io=b.artifact("onnx-fp32").io,
            produced_by=Provenance(tool="test", source="onnx-fp32"),
        )
        e.set_recommended({"artifact": "onnx-derived"})
    return bundle


def test_rollback_rechecks_parity(tmp_path: Path) -> None:
    good = _with_derived(make_bundle(tmp_path / "a"), tmp_path / "a", model_seed=0)
    bad = _with_derived(make_bundle(tmp_path / "b"), tmp_path / "b", model_seed=7)
    r = recheck_parity(Bundle.load(good))
    assert r.passed and r.how == "parity" and r.source == "onnx-fp32" and r.images == 3
    assert not recheck_parity(Bundle.load(bad)).passed
    reg_dir = tmp_path / "reg"
    reg = ModelRegistry(reg_dir, create=True)
    reg.add(bad, version="1")  # production 1: a version whose artifact drifted
    reg.add(good, version="2")
    reg.add(good, version="3")
    reg.promote("tiny", "2")
    reg.promote("tiny", "3")
    # 3 -> 2: re-checked, passes
    r = CliRunner().invoke(app, ["registry", "rollback", str(reg_dir), "tiny", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["from"], out["to"]) == ("3", "2")
    assert out["recheck"]["passed"] and out["recheck"]["how"] == "parity"
    # 2 -> 1: refused (exit 1), nothing switched, the history untouched
    before = json.loads((reg_dir / "registry.json").read_text())
    r = CliRunner().invoke(app, ["registry", "rollback", str(reg_dir), "tiny"])
    assert r.exit_code == 1 and "failed its parity re-check" in r.output, r.output
    assert "nothing was switched" in r.output
    assert json.loads((reg_dir / "registry.json").read_text()) == before
    assert reg.stage_version("tiny") == "2"
    # --no-check rolls back anyway
    r = CliRunner().invoke(app, ["registry", "rollback", str(reg_dir), "tiny", "--no-check"])
    assert r.exit_code == 0 and reg.stage_version("tiny") == "1"


def test_recheck_without_source_runs_it(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "c")  # imported: no source artifact, no samples
    r = recheck_parity(Bundle.load(b))
    assert r.passed and r.how == "ran" and r.source is None
    shutil.rmtree(b)


def test_recheck_reads_a_tolerance_recorded_before_match_iou_existed(tmp_path: Path) -> None:
    """A parity record written before ``match_iou`` was a tolerance field re-checks at the
    IoU its gate used (0.9), not at an unbounded one that would match nothing."""
    from cvdeploy.bundle import Check
    from cvdeploy.verify.recheck import _recorded_tolerance

    b = _with_derived(make_bundle(tmp_path / "a"), tmp_path / "a", model_seed=0)
    old = {"cosine_min": 0.98, "rel_max_err": "inf", "match_min": 0.75, "score_diff_max": 0.08,
           "cosine_all_min": None}  # fmt: skip
    bundle = Bundle.load(b)
    check = Check(
        kind="parity", name="onnx-fp32", passed=True, data={"source": "onnx-fp32", "tolerance": old}
    )
    with bundle.edit(action="test", details={}) as e:
        e.add_check("onnx-derived", check)
    loaded = Bundle.load(b)
    tol = _recorded_tolerance(loaded, "onnx-derived", "onnx-fp32")
    assert tol is not None and tol.match_iou == 0.9 and tol.match_min == 0.75
    r = recheck_parity(loaded)
    assert r.passed and r.how == "parity", r.failures
