"""run_doctor: one planted cause per finding type, and no finding on a clean case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from cvdeploy.bundle import Bundle, Check
from cvdeploy.diagnose import DoctorOptions, fault_tensors, record_reference, run_doctor
from cvdeploy.errors import InputError, UsageError
from tests.diagnose.conftest import (
    add_onnx_artifact,
    colour_images,
    conv_stack_onnx,
    conv_stack_weights,
    edit_manifest,
)

pytest.importorskip("scipy")


def _data(root: Path) -> Path:
    return root / "data" / "data.yaml"


def _kinds(rep) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(f.kind, f.severity) for f in rep.problems]


def test_a_clean_bundle_is_healthy(stack: Path, stack_root: Path, tmp_path: Path) -> None:
    record_reference(Bundle.load(stack), _data(stack_root), progress=False)
    prod = tmp_path / "prod"
    colour_images(prod, 40, seed=7)
    rep = run_doctor(stack, DoctorOptions(data=_data(stack_root), production=prod, progress=False))
    assert rep.problems == [], [(f.kind, f.title, f.evidence) for f in rep.problems]
    assert {k: s.status for k, s in rep.sections.items()} == {
        "environment": "ran",
        "integrity": "ran",
        "accuracy": "ran",
        "layers": "skipped",
        "preprocessing": "ran",
        "drift": "ran",
    }
    assert rep.sections["drift"].data["report"]["verdict"] != "drift"
    json.dumps(rep.to_dict())  # JSON-ready


def test_a_reference_recorded_again_is_not_an_altered_file(stack: Path, stack_root: Path) -> None:
    # re-recording a reference under the same name rewrote its file, and the first check's
    # sha256 made doctor report the bundle as altered (critical)
    from cvdeploy.diagnose.checks import file_findings

    for _ in range(2):
        record_reference(Bundle.load(stack), _data(stack_root), progress=False)
    findings, data = file_findings(Bundle.load(stack))
    assert findings == [] and data["problems"] == [], data
    ref = next(p for p in (stack / "reference").iterdir())
    ref.write_bytes(ref.read_bytes() + b"x")  # the newest check still guards the file
    findings, _ = file_findings(Bundle.load(stack))
    assert [f.severity for f in findings] == ["critical"]


def test_an_altered_file_and_a_broken_artifact(
    stack: Path, stack_root: Path, tmp_path: Path
) -> None:
    w = conv_stack_weights()
    w["w2"] = w["w2"] * 1.6
    bad = conv_stack_onnx(tmp_path / "bad.onnx", weights=w)
    add_onnx_artifact(stack, "onnx-int8", bad, precision="int8", source="onnx-fp32")
    add_onnx_artifact(
        stack, "onnx-copy", stack_root / "stack.onnx", precision="fp32", source="onnx-fp32"
    )
    b = Bundle.load(stack)
    with b.edit(action="test") as edit:  # it passed its gate when it was made
        check = Check(kind="parity", name="onnx-fp32", passed=True, data={"source": "onnx-fp32"})
        edit.add_check("onnx-int8", check)
    copy = stack / "onnx-copy" / "model.onnx"
    copy.write_bytes(copy.read_bytes() + b"\0")  # a file changed after release
    opts = DoctorOptions(
        data=_data(stack_root), sections=("integrity", "accuracy", "layers"), progress=False
    )
    rep = run_doctor(stack, opts)
    titles = [f.title for f in rep.problems]
    assert [f.severity for f in rep.problems][:2] == ["critical", "critical"], titles
    assert any("onnx-copy/model.onnx" in t and "altered" in t for t in titles), titles
    assert any(t.startswith("onnx-int8 no longer agrees with onnx-fp32") for t in titles), titles
    acc = [f for f in rep.problems if f.kind == "accuracy"]
    assert acc and acc[0].artifact == "onnx-int8" and acc[0].impact and acc[0].impact > 0.05
    assert any("TP" in e and "missed" in e for e in acc[0].evidence)
    layers = [f for f in rep.findings if f.kind == "layers" and "jumps" in f.title]
    assert layers and "conv2" in layers[0].title, [f.title for f in rep.findings]


def test_parity_fails_again_on_the_users_images(
    stack: Path, stack_root: Path, tmp_path: Path
) -> None:
    w = conv_stack_weights()
    w["w3"] = w["w3"] + 0.3
    add_onnx_artifact(
        stack,
        "onnx-x",
        conv_stack_onnx(tmp_path / "x.onnx", weights=w),
        precision="fp32",
        source="onnx-fp32",
    )
    b = Bundle.load(stack)
    with b.edit(action="test") as edit:
        edit.add_check(
            "onnx-x",
            Check(kind="parity", name="onnx-fp32", passed=True, data={"source": "onnx-fp32"}),
        )
    rep = run_doctor(
        stack, DoctorOptions(data=_data(stack_root), sections=("integrity",), progress=False)
    )
    assert [f.title.split(":")[0] for f in rep.problems] == [
        "onnx-x no longer agrees with onnx-fp32 on your images"
    ]


def test_another_environment_is_named(stack: Path, stack_root: Path) -> None:
    def older(d: dict) -> None:
        env = d["artifacts"][0]["environment"]
        env["packages"]["onnxruntime"] = "1.16.0"
        env["cpu"]["flags"] = [*env["cpu"]["flags"], "i8mm"]  # an Arm INT8 matmul flag

    edit_manifest(stack, older)
    rep = run_doctor(
        stack, DoctorOptions(data=_data(stack_root), sections=("environment",), progress=False)
    )
    (f,) = rep.problems
    assert f.kind == "environment" and f.artifact == "onnx-fp32"
    assert any("packages.onnxruntime: 1.16.0" in e for e in f.evidence)
    assert any("cpu.flags" in e and "i8mm" in e for e in f.evidence)


def test_a_wrong_spec_and_a_wrong_production_pipeline(
    stack: Path, stack_root: Path, tmp_path: Path
) -> None:
    def bgr(d: dict) -> None:
        d["spec"]["preprocess"]["color"] = "bgr"

    edit_manifest(stack, bgr)
    rep = run_doctor(
        stack, DoctorOptions(data=_data(stack_root), sections=("preprocessing",), progress=False)
    )
    (f,) = rep.problems
    assert (
        f.severity == "critical"
        and "spec's preprocessing looks wrong" in f.title
        and "color=rgb" in f.title
    )
    # the production pipeline forgot /255: read back from the model inputs it logged
    good = tmp_path / "good"
    shutil.copytree(stack_root / "bundle", good)
    record_reference(Bundle.load(good), _data(stack_root), progress=False)
    prod = tmp_path / "tensors"
    prod.mkdir()
    imgs = [cv2.imread(str(p)) for p in colour_images(tmp_path / "raw", 24, seed=3)]
    for i, x in enumerate(fault_tensors(imgs, Bundle.load(good).spec, [("scale", 1.0)])):
        np.save(prod / f"input_{i:03d}.npy", x)
    rep = run_doctor(
        good, DoctorOptions(production=prod, sections=("preprocessing",), progress=False)
    )
    (f,) = rep.problems
    assert f.severity == "critical" and "scale 1 (spec: 1/255)" in f.title, f.title


def test_drift_is_found_and_a_small_window_is_said_to_be_small(
    stack: Path, stack_root: Path, tmp_path: Path
) -> None:
    record_reference(Bundle.load(stack), _data(stack_root), progress=False)
    dark = tmp_path / "dark"
    colour_images(dark, 40, seed=8, scale=0.55)
    rep = run_doctor(stack, DoctorOptions(production=dark, sections=("drift",), progress=False))
    (f,) = rep.problems
    assert f.kind == "drift" and any(e.startswith("brightness") for e in f.evidence), f.evidence
    few = tmp_path / "few"
    colour_images(few, 6, seed=9)
    rep = run_doctor(stack, DoctorOptions(production=few, sections=("drift",), progress=False))
    assert rep.problems == [] and "too few" in rep.findings[0].title


def test_bad_input_is_a_clear_error(stack: Path, stack_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs images"):
        run_doctor(stack, DoctorOptions())
    with pytest.raises(InputError, match="does not exist"):
        run_doctor(stack, DoctorOptions(production=tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        run_doctor(stack, DoctorOptions(production=tmp_path / "empty"))
    bad = tmp_path / "bad"
    colour_images(bad, 3)
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InputError, match=r"broken\.jpg"):
        run_doctor(
            stack,
            DoctorOptions(production=bad, sections=("drift", "preprocessing"), progress=False),
        )
    with pytest.raises(UsageError, match="no float source"):
        run_doctor(
            stack, DoctorOptions(data=_data(stack_root), sections=("layers",), artifact="onnx-fp32")
        )
    with pytest.raises(UsageError, match="unknown section"):
        run_doctor(stack, DoctorOptions(data=_data(stack_root), sections=("vibes",)))


def test_a_keep_float_trial_within_the_calibration_noise_is_not_a_warning() -> None:
    """A keep-float change no larger than the calibration noise is reported as noise (info),
    not as a recovery (warning); one beyond it stays a warning."""
    from cvdeploy.diagnose.doctor import _layer_findings
    from cvdeploy.diagnose.findings import Finding
    from cvdeploy.diagnose.layerwise import LayerReport, LayerStat

    st = LayerStat("conv2", "conv2", "Conv", 1, 0.99, 20.0, 25.0, output_share=0.6)

    def finding(trial: dict[str, object]) -> Finding:
        lr = LayerReport("int8", "fp32", 4, [st], [], None, 10.0, ["conv2"], trial)
        return next(f for f in _layer_findings(lr) if "keep" in f.title)

    base = {"map_fp32": 0.3346, "map_int8": 0.3262, "gap": 0.0084, "command": "cvdeploy ..."}
    noisy = finding(
        {
            **base,
            "map_keep": 0.3310,
            "recovered": 0.57,
            "noise_maps": [0.3313, 0.3230],
            "noise_sd": 0.0042,
            "within_noise": True,
            "gap_within_noise": True,
        }
    )
    assert noisy.severity == "info"
    text = " ".join(noisy.evidence)
    assert "calibration noise" in text and "within two standard deviations" in text
    assert "the loss is calibration noise" in text
    beyond_noise = {
        **base,
        "map_keep": 0.3340,
        "recovered": 0.93,
        "noise_maps": [0.3262, 0.3263],
        "noise_sd": 0.0001,
        "within_noise": False,
        "gap_within_noise": False,
    }
    clear = finding(beyond_noise)
    assert clear.severity == "warning"
    assert "beyond two standard deviations" in " ".join(clear.evidence)
    # beyond the calibration noise, but a placebo (healthy layers kept in float) moved the
    # accuracy as much: not a recovery
    placebo = finding(
        {
            **beyond_noise,
            "placebo_keep": ["conv9"],
            "map_placebo": 0.3345,
            "beyond_placebo": False,
        }
    )
    assert placebo.severity == "info"
    assert "placebo: keeping 1 healthy layer(s) in float instead (conv9)" in " ".join(
        placebo.evidence
    )
    assert "no larger than" in " ".join(placebo.evidence)


def test_a_shared_quantizer_jump_is_reported_as_the_quantizer_with_every_layer_it_feeds() -> None:
    """A first jump whose input quantizer feeds other layers that all jump too is reported
    as that quantizer's fault, naming every layer; a layer's own jump names the layer."""
    from cvdeploy.diagnose.doctor import _layer_findings
    from cvdeploy.diagnose.layerwise import LayerReport, LayerStat

    layers = [
        LayerStat("c1", "c1", "Conv", 0, 0.99, 40.0, 40.0),
        LayerStat("c2", "c2", "Conv", 1, 0.5, 3.0, 3.6, quantizer="fq1"),
        LayerStat("c3", "c3", "Conv", 2, 0.5, 3.0, 3.2, quantizer="fq1"),
    ]
    lr = LayerReport("int8", "fp32", 4, layers, [], "c2", 12.0, [], None, "fq1", ["c2", "c3"])
    (f,) = _layer_findings(lr)
    assert "quantizer fq1" in f.title and "2 layers" in f.title
    assert "c2 (3.6 dB), c3 (3.2 dB)" in f.evidence[0]
    assert "--keep-float 'c2' --keep-float 'c3'" in f.fix
    assert f.data["quantizer"] == "fq1" and f.data["layers"] == ["c2", "c3"]
    own = LayerReport("int8", "fp32", 4, layers, [], "c2", 12.0, [], None, None, ["c2"])
    (g,) = _layer_findings(own)
    assert g.title.endswith("the error jumps at layer c2 (Conv)") and "quantizer" not in g.title


def test_a_jump_the_output_does_not_feel_is_information_not_a_warning() -> None:
    """A first jump whose own error removes under 5 % of the output error (measured) is a
    coarse layer, not a broken one: reported as info with that evidence and no keep-float
    advice; a felt or unmeasured jump stays a warning (the demo's healthy OpenVINO INT8 has
    such a layer at 11.9 dB, and `doctor --only layers` called it unhealthy)."""
    from cvdeploy.diagnose.doctor import _layer_findings
    from cvdeploy.diagnose.layerwise import LayerReport, LayerStat

    def report(shares: list[float | None], quantizer: str | None) -> LayerReport:
        layers = [
            LayerStat("c1", "c1", "Conv", 0, 0.99, 40.0, 40.0, output_share=0.01),
            *(
                LayerStat(
                    f"c{i + 2}",
                    f"c{i + 2}",
                    "Conv",
                    i + 1,
                    0.95,
                    11.0,
                    11.9,
                    output_share=sh,
                    quantizer=quantizer,
                )
                for i, sh in enumerate(shares)
            ),
        ]
        jl = [s.layer for s in layers[1:]]
        return LayerReport("int8", "fp32", 8, layers, [], "c2", 12.0, [], None, quantizer, jl)

    (f,) = _layer_findings(report([-0.017], None))
    assert f.severity == "info" and f.title.endswith("the error jumps at layer c2 (Conv)")
    text = " ".join(f.evidence)
    assert "taking c2's own error out changes the output error by +2%" in text
    assert "does not feel it (under 5%)" in text
    assert "--keep-float" not in f.fix and f.fix.startswith("nothing for this layer's sake")
    for felt in ([0.3], [None]):  # felt, or not measured (--no-layer-shares): a warning
        (g,) = _layer_findings(report(felt, None))
        assert g.severity == "warning" and "--keep-float 'c2'" in g.fix
        assert "does not feel" not in " ".join(g.evidence)
    (q,) = _layer_findings(report([0.02, 0.01], "fq1"))  # a shared quantizer: the sum counts
    assert q.severity == "info" and "quantizer fq1" in q.title
    assert "taking these 2 layers' own error out changes the output error by -3%" in " ".join(
        q.evidence
    )
    (q,) = _layer_findings(report([0.03, 0.03], "fq1"))
    assert q.severity == "warning" and "check the calibration range of fq1" in q.fix


def test_a_few_lost_channels_are_named_and_a_uniformly_coarse_layer_is_not() -> None:
    """A layer whose isolated error sits in a few output channels (a per-tensor input scale
    that rounds small channels to zero, read channel by channel) says so; a layer that is
    coarse everywhere, or a healthy one, does not; the gate verdict of the trial is shown."""
    from cvdeploy.diagnose.doctor import _layer_findings
    from cvdeploy.diagnose.layerwise import LayerReport, LayerStat, _channel_stats

    def stat(name: str, dbs: list[float]) -> LayerStat:
        st = LayerStat(name, name, "Conv", 1, 0.99, 15.0, 15.0, output_share=0.9)
        sig = np.ones(len(dbs))
        _channel_stats(st, np.stack([sig, sig / 10 ** (np.array(dbs) / 10)]))
        return st

    planted = stat("dw", [22.0, 21.0, 20.0, 19.0, 18.0, -11.0, 12.0])
    assert planted.channels == 7 and planted.lost_channels == [5]  # 12 dB: coarse, not lost
    assert planted.channel_median_db == pytest.approx(19.0)
    assert stat("coarse", [5.0, 6.0, 4.0, 5.0]).lost_channels == []
    assert stat("healthy", [30.0, 28.0, 31.0, 25.0]).lost_channels == []
    dead = np.stack([np.zeros(3), np.ones(3)])  # no signal at all: nothing to judge
    empty = LayerStat("x", "x", "Conv", 1, 0.99, 15.0)
    _channel_stats(empty, dead)
    assert empty.channels is None and empty.lost_channels == []

    trial = {"map_fp32": 0.33, "map_int8": 0.16, "map_keep": 0.29, "gap": 0.17}
    lr = LayerReport(
        "onnx-int8", "onnx-fp32", 8, [planted], [], None, 12.0, ["dw"],
        {**trial, "recovered": 0.74, "keep_passes_gate": False, "command": "cvdeploy ..."},
    )  # fmt: skip
    f = next(f for f in _layer_findings(lr) if "keep" in f.title)
    text = " ".join(f.evidence)
    assert "dw: 1 of 7 output channels are lost" in text and "channel 5;" in text
    assert "the INT8 integrity gate still refuses" in text
    lr.layers = [stat("dw", [30.0, 28.0, 31.0, 25.0])]
    assert "lost" not in " ".join(
        next(f for f in _layer_findings(lr) if "keep" in f.title).evidence
    )
