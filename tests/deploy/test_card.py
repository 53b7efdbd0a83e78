"""The model card and changelog: generated from the manifest, refreshed by every change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cvdeploy.bundle import BUNDLE_HOOKS, Bundle, run_bundle_hooks
from cvdeploy.cli.main import app
from cvdeploy.deploy import CARD_FILE, CHANGELOG_FILE, render_card, write_card


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_content(deploy_bundle: Path) -> None:
    card = (deploy_bundle / CARD_FILE).read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "cvdeploy" and meta["pipeline_tag"] == "object-detection"
    (result,) = meta["model-index"][0]["results"]
    assert result["task"]["type"] == "object-detection"
    assert result["dataset"] == {"name": "shapes", "type": "shapes", "split": "val"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"mAP50-95": 0.61, "mAP50": 0.83}
    for section in (
        "## Intended use",
        "## Limitations",
        "## Preprocessing contract",
        "## Artifacts",
        "## Accuracy",
        "## Latency",
        "## Quantization, pruning and distillation",
        "## Drift reference",
        "## Change history",
    ):
        assert section in card
    b = Bundle.load(deploy_bundle)
    sha = b.artifact("onnx-fp32").files[0].sha256
    assert sha[:16] in card and "unsigned" in card
    assert "[0.5500, 0.6600]" in card  # the bootstrap interval
    assert "letterbox, aligned center, pad value 114" in card and "| colour order | RGB |" in card
    assert "p50 ms" in card and "| 1.50 |" in card and "logical cores" in card
    # history: import, eval, bench
    assert card.count("| import |") == 1 and "| bench |" in card
    log = (deploy_bundle / CHANGELOG_FILE).read_text()
    assert log.index("**bench**") < log.index("**eval**") < log.index("**import**")


def test_every_change_refreshes_the_card(deploy_bundle: Path) -> None:
    b = Bundle.load(deploy_bundle)
    with b.edit(action="quantize", details={"preset": "mixed", "subset": 64}) as e:
        e.write_text("note.txt", "x")
    card = (deploy_bundle / CARD_FILE).read_text()
    assert "quantize: preset=mixed, subset=64" in card
    assert card.count("| quantize |") == 1
    # the card is never written through a hard link into an older bundle copy
    copy = deploy_bundle.parent / "copy"
    shutil.copytree(deploy_bundle, copy)
    before = (copy / CARD_FILE).read_text()
    with Bundle.load(deploy_bundle).edit(action="eval", details={}):
        pass
    assert (copy / CARD_FILE).read_text() == before


def test_a_failing_hook_does_not_cost_the_change(
    deploy_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cvdeploy.deploy.card as card_mod

    def boom(*a: object, **k: object) -> str:
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(card_mod, "render_card", boom)
    b = Bundle.load(deploy_bundle)
    with pytest.warns(RuntimeWarning, match="renderer broke"), b.edit(action="eval", details={}):
        pass
    assert Bundle.load(deploy_bundle).manifest.history[-1].action == "eval"  # the change landed
    assert not (deploy_bundle / CARD_FILE).exists()  # and no stale card describes another one
    monkeypatch.undo()
    assert run_bundle_hooks(deploy_bundle) == []
    assert (deploy_bundle / CARD_FILE).is_file()
    assert "model-card" in BUNDLE_HOOKS.names()


def test_signature_status_in_card(deploy_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    from cvdeploy.security.signing import generate_keypair, sign_bundle

    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    sign_bundle(deploy_bundle, tmp_path / "k.pem")
    card = (deploy_bundle / CARD_FILE).read_text()  # refreshed by sign
    assert "signed (key ed25519:" in card and "verify with" in card
    files = write_card(deploy_bundle, public_key=tmp_path / "k.pub")
    assert "signature valid" in files.card.read_text()
    with Bundle.load(deploy_bundle).edit(action="eval", details={}):
        pass
    assert "manifest changed since: sign again" in (deploy_bundle / CARD_FILE).read_text()


def test_legacy_bundle_card() -> None:
    """A bundle written before the typed manifest (no intervals, odd payloads) renders."""
    from cvdeploy.bundle import Manifest

    raw = json.loads(
        (
            Path(__file__).parents[1] / "fixtures" / "bundle_0.1.0_before_typed_manifest.json"
        ).read_text()
    )
    text = render_card(Manifest.model_validate(raw))
    assert "not recorded (re-run `cvdeploy eval`)" in text or "Not evaluated yet" in text


def test_card_cli(deploy_bundle: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        app,
        [
            "card",
            str(deploy_bundle),
            "--intended-use",
            "Counting parts on a conveyor.",
            "--license",
            "apache-2.0",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    card = Path(out["card"]).read_text()
    assert "Counting parts on a conveyor." in card
    assert _front_matter(card)["license"] == "apache-2.0"
    # the hand-written fields survive the next change
    with Bundle.load(deploy_bundle).edit(action="eval", details={}):
        pass
    assert "Counting parts on a conveyor." in (deploy_bundle / CARD_FILE).read_text()
    r = CliRunner().invoke(app, ["card", str(deploy_bundle), "--out", str(tmp_path / "docs")])
    assert r.exit_code == 0 and (tmp_path / "docs" / CARD_FILE).is_file()
    r = CliRunner().invoke(app, ["card", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in r.output
