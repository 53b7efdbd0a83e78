"""`cvdeploy package`: every target's directory, checked offline (the image build is in
test_container.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cvdeploy.bundle import Bundle
from cvdeploy.cli.main import app
from cvdeploy.deploy import PackageOptions, package_bundle
from cvdeploy.errors import BackendUnavailable, UsageError


@pytest.fixture()
def fake_wheel(tmp_path: Path) -> Path:
    """Stands in for the cvdeploy wheel (building one is the container test's job)."""
    p = tmp_path / "wheel" / "cvdeploy-0.1.0-py3-none-any.whl"
    p.parent.mkdir()
    p.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    return p


def _opts(fake_wheel: Path, **kw: Any) -> PackageOptions:
    return PackageOptions(cvdeploy_wheel=fake_wheel, **kw)


def test_docker_context(deploy_bundle: Path, fake_wheel: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    res = package_bundle(deploy_bundle, "docker", out, options=_opts(fake_wheel))
    assert res.out == out and res.artifact == "onnx-fp32" and res.image == "cvdeploy-tiny:0.1.0"
    assert res.commands == [
        "docker build -t cvdeploy-tiny:0.1.0 .",
        "docker run --rm -p 8080:8080 cvdeploy-tiny:0.1.0",
    ]
    df = (out / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim" in df and df.count("FROM ${BASE}") == 2
    assert "USER 10001:10001" in df and "HEALTHCHECK" in df and "/readyz" in df
    assert "--no-index" not in df  # online build by default
    reqs = (out / "requirements.txt").read_text()
    assert "onnxruntime==" in reqs and "fastapi==" in reqs and "numpy==" in reqs
    for heavy in ("torch", "tensorflow", "openvino", "onnx2tf", "nncf", "cryptography"):
        assert f"\n{heavy}==" not in reqs, heavy
    ignore = (out / ".dockerignore").read_text().splitlines()
    assert ignore[1] == "*" and "!bundle" in ignore and "!Dockerfile" in ignore
    assert "docker build -t cvdeploy-tiny:0.1.0 ." in (out / "README.md").read_text()
    Bundle.load(out / "bundle")  # the bundle, intact
    assert yaml.safe_load((out / "serve.yaml").read_text()) == {
        "artifact": "onnx-fp32",
        "max_batch": 8,
    }
    assert (out / "entrypoint.sh").stat().st_mode & 0o111
    assert (out / "wheels" / "cvdeploy" / fake_wheel.name).is_file()
    meta = json.loads((out / "cvdeploy-package.json").read_text())
    assert meta["target"] == "docker" and "Dockerfile" in meta["files"]
    # the entrypoint: SageMaker's `serve`, platform model dirs, loopback by HOST
    ep = (out / "entrypoint.sh").read_text()
    assert '"${1:-}" = serve' in ep and "/opt/ml/model" in ep and "AZUREML_MODEL_DIR" in ep


def test_docker_refusals(deploy_bundle: Path, fake_wheel: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "x").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        package_bundle(deploy_bundle, "docker", out, options=_opts(fake_wheel))
    assert (out / "x").read_text() == "keep me"
    with pytest.raises(UsageError, match="inside the bundle"):
        package_bundle(deploy_bundle, "docker", deploy_bundle / "p", options=_opts(fake_wheel))
    with pytest.raises(UsageError, match="unknown deploy target"):
        package_bundle(deploy_bundle, "heroku", tmp_path / "h", options=_opts(fake_wheel))
    with pytest.raises(UsageError, match="not a wheel"):
        package_bundle(
            deploy_bundle,
            "docker",
            tmp_path / "w",
            options=PackageOptions(cvdeploy_wheel=tmp_path / "nope.whl"),
        )
    assert not (tmp_path / "w").exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".w.package-")]


def _with_artifact(bundle: Path, fmt: str, art_id: str) -> None:
    """Add a fake artifact of another format (its files are never run here)."""
    from cvdeploy.bundle import Provenance

    b = Bundle.load(bundle)
    io = b.artifact("onnx-fp32").io
    with b.edit(action="export", details={}) as e:
        d = e.artifact_dir(art_id)
        (d / "model.bin").write_bytes(b"x")
        e.add_artifact(
            artifact_id=art_id,
            format=fmt,
            precision="fp32",
            io=io,
            produced_by=Provenance(tool="test", source="onnx-fp32"),
        )


def test_unsupported_artifacts(deploy_bundle: Path, fake_wheel: Path, tmp_path: Path) -> None:
    _with_artifact(deploy_bundle, "torch", "torch-fp32")
    _with_artifact(deploy_bundle, "tflite", "tflite-fp32")
    with pytest.raises(UsageError, match="no training framework"):
        package_bundle(
            deploy_bundle,
            "docker",
            tmp_path / "a",
            options=_opts(fake_wheel, artifact="torch-fp32"),
        )
    with pytest.raises(UsageError, match=r"cannot be deployed to triton .*onnx, openvino"):
        package_bundle(
            deploy_bundle,
            "triton",
            tmp_path / "b",
            options=_opts(fake_wheel, artifact="tflite-fp32"),
        )
    r = CliRunner().invoke(
        app,
        [
            "package",
            str(deploy_bundle),
            "--target",
            "docker",
            "--out",
            str(tmp_path / "c"),
            "--artifact",
            "torch-fp32",
        ],
    )
    assert r.exit_code == 2 and "export" in r.output


@pytest.fixture()
def encrypted(deploy_bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    pytest.importorskip("cryptography")
    from cvdeploy.security.crypto import load_key as _load

    def load_key(p: Path) -> Any:
        return _load(key_file=p)

    from cvdeploy.security.crypto import encrypt_bundle, generate_key, write_key_file

    key = write_key_file(tmp_path / "model.key", generate_key())
    out = tmp_path / "enc"
    encrypt_bundle(Bundle.load(deploy_bundle), load_key(key), out=out)
    return out, key


def test_encrypted_bundle(encrypted: tuple[Path, Path], fake_wheel: Path, tmp_path: Path) -> None:
    enc, key = encrypted
    with pytest.raises(UsageError, match="encrypted: say where the container reads its key"):
        package_bundle(enc, "docker", tmp_path / "a", options=_opts(fake_wheel))
    with pytest.raises(UsageError, match="Triton loads plain model files"):
        package_bundle(enc, "triton", tmp_path / "t", options=_opts(fake_wheel))
    from cvdeploy.errors import CvdeployError
    from cvdeploy.security.crypto import generate_key, write_key_file

    other = write_key_file(tmp_path / "other.key", generate_key())
    with pytest.raises(CvdeployError, match="cannot decrypt"):
        package_bundle(
            enc,
            "docker",
            tmp_path / "b",
            options=_opts(fake_wheel, key_env="MODEL_KEY", key_file=other),
        )
    res = package_bundle(
        enc, "docker", tmp_path / "c", options=_opts(fake_wheel, key_env="MODEL_KEY", key_file=key)
    )
    out = res.out
    assert yaml.safe_load((out / "serve.yaml").read_text())["model_key_env"] == "MODEL_KEY"
    assert "cryptography==" in (out / "requirements.txt").read_text()
    assert "-e MODEL_KEY" in res.commands[1]
    assert not list((out / "bundle").rglob("*.onnx"))  # still encrypted in the image
    k8s = package_bundle(
        enc, "kubernetes", tmp_path / "k", options=_opts(fake_wheel, key_env="MODEL_KEY")
    )
    dep = yaml.safe_load((k8s.out / "deployment.yaml").read_text())
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    ref = next(e for e in env if e["name"] == "MODEL_KEY")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "tiny-model-key", "key": "model.key"}
    assert (k8s.out / "secret.example.yaml").is_file()
    assert any("kubectl create secret generic tiny-model-key" in c for c in k8s.commands)


def test_kubernetes(deploy_bundle: Path, fake_wheel: Path, tmp_path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    res = package_bundle(
        deploy_bundle,
        "kubernetes",
        tmp_path / "k",
        options=_opts(fake_wheel, namespace="vision", tls_secret="tiny-tls", kserve=True),
    )
    out = res.out
    kinds = {}
    for f in ("deployment", "service", "hpa", "pdb", "networkpolicy", "configmap"):
        doc = yaml.safe_load((out / f"{f}.yaml").read_text())
        kv.validate(doc, "1.30.0", strict=True)  # offline schemas, unknown fields refused
        kinds[doc["kind"]] = doc
    dep = kinds["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"  # TLS from the Secret
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "tls", "secret": {"secretName": "tiny-tls"}} in pod["volumes"]
    # measured: peak RSS 180 MB -> 1.5x = 270 -> 320Mi; 1 thread -> 1 CPU
    assert c["resources"] == {
        "requests": {"cpu": "1", "memory": "320Mi"},
        "limits": {"memory": "640Mi"},
    }
    assert any("peak RSS" in n for n in res.notes)
    cfg = yaml.safe_load(kinds["ConfigMap"]["data"]["serve.yaml"])
    assert cfg["tls"] == {"cert": "/etc/cvdeploy-tls/tls.crt", "key": "/etc/cvdeploy-tls/tls.key"}
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "tiny"
    assert kinds["NetworkPolicy"]["spec"]["egress"] == []
    assert all(d["metadata"]["namespace"] == "vision" for d in kinds.values())
    assert (out / "docker" / "Dockerfile").is_file()  # the image it runs
    # KServe, no canary: one InferenceService per mode
    (sl,) = yaml.safe_load_all((out / "kserve" / "serverless.yaml").read_text())
    (raw,) = yaml.safe_load_all((out / "kserve" / "raw.yaml").read_text())
    assert sl["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert raw["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_kserve_canary_both_modes(deploy_bundle: Path, fake_wheel: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--stable-image"):
        package_bundle(
            deploy_bundle,
            "kubernetes",
            tmp_path / "a",
            options=_opts(fake_wheel, kserve=True, canary=10),
        )
    with pytest.raises(UsageError, match="add --kserve"):
        package_bundle(
            deploy_bundle, "kubernetes", tmp_path / "b", options=_opts(fake_wheel, canary=10)
        )
    res = package_bundle(
        deploy_bundle,
        "kubernetes",
        tmp_path / "k",
        options=_opts(
            fake_wheel, kserve=True, canary=10, stable_image="reg/tiny:1", image="reg/tiny:2"
        ),
    )
    (sl,) = yaml.safe_load_all((res.out / "kserve" / "serverless.yaml").read_text())
    assert sl["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert sl["spec"]["predictor"]["containers"][0]["image"] == "reg/tiny:2"
    stable, canary, svc = yaml.safe_load_all((res.out / "kserve" / "raw.yaml").read_text())
    for isvc in (stable, canary):
        assert (
            isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
        )
        assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]  # ignored there (#5335)
        p = isvc["spec"]["predictor"]
        assert p["minReplicas"] == p["maxReplicas"]  # fixed counts keep the ratio
    n_s = stable["spec"]["predictor"]["minReplicas"]
    n_c = canary["spec"]["predictor"]["minReplicas"]
    assert n_c / (n_s + n_c) == pytest.approx(0.10)
    assert stable["spec"]["predictor"]["containers"][0]["image"] == "reg/tiny:1"
    assert svc["kind"] == "Service"
    assert svc["spec"]["selector"] == {"app.kubernetes.io/part-of": "tiny"}
    for isvc in (stable, canary):
        assert isvc["spec"]["predictor"]["labels"]["app.kubernetes.io/part-of"] == "tiny"


class _FakeTriton:
    """Answers tritonclient's infer() with ONNX Runtime: the real request objects are built."""

    def __init__(self, model_file: Path) -> None:
        import onnxruntime as ort

        self.sess = ort.InferenceSession(str(model_file))
        self.calls = 0

    def infer(self, model: str, inputs: list[Any], outputs: list[Any]) -> Any:
        self.calls += 1
        (inp,) = inputs
        assert inp.datatype() == "FP32"
        x = inp._np_data if hasattr(inp, "_np_data") else None
        if x is None:  # binary data: rebuild from the raw buffer
            x = np.frombuffer(inp._get_binary_data(), np.float32).reshape(inp.shape())
        outs = self.sess.run([o.name() for o in outputs], {inp.name(): x})
        names = [o.name() for o in outputs]

        class Result:
            def as_numpy(self, name: str) -> np.ndarray:
                return outs[names.index(name)]

        return Result()

    def close(self) -> None:
        pass


def test_triton(deploy_bundle: Path, deploy_images: Path, tmp_path: Path) -> None:
    pytest.importorskip("tritonclient.http")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    res = package_bundle(deploy_bundle, "triton", tmp_path / "t", options=PackageOptions())
    repo = res.out / "model_repository" / "tiny"
    cfg = text_format.Parse((repo / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    b = Bundle.load(deploy_bundle)
    io = b.artifact("onnx-fp32").io
    # our semantic checks: names, dtypes and shapes against the artifact, batching, instances
    assert cfg.name == "tiny" and cfg.backend == "onnxruntime" and cfg.max_batch_size == 8
    assert [i.name for i in cfg.input] == [t.name for t in io.inputs]
    assert list(cfg.input[0].dims) == list(io.inputs[0].shape[1:])
    assert list(cfg.output[0].dims) == list(io.outputs[0].shape[1:])
    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    # the bench says 1 thread on this machine's cores: one instance per core
    import os

    assert cfg.instance_group[0].count == max(1, len(os.sched_getaffinity(0)))
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.parameters["intra_op_thread_count"].string_value == "1"
    assert (repo / "1" / "model.onnx").read_bytes() == (b.model_file("onnx-fp32").read_bytes())
    # the client: cvdeploy's preprocessing and decoding around a (fake) Triton call
    spec = importlib.util.spec_from_file_location(
        "cvdeploy_triton_client", res.out / "client" / "cvdeploy_triton_client.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cvdeploy_triton_client"] = mod
    spec.loader.exec_module(mod)
    from cvdeploy.data.io import read_image
    from cvdeploy.pipeline import Predictor

    images = [read_image(p) for p in sorted(deploy_images.iterdir())]
    with mod.TritonPredictor.from_dir(res.out / "client") as tp:
        fake = _FakeTriton(repo / "1" / "model.onnx")
        tp.runner._client = fake
        got, _ = tp.predict(images)
    with Predictor.from_bundle(b, batch=8) as p:
        want, _ = p.predict(images)
    assert fake.calls == 1
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-3)
        np.testing.assert_array_equal(g.class_ids, w.class_ids)


def test_cloud_targets(deploy_bundle: Path, fake_wheel: Path, tmp_path: Path) -> None:
    sm = package_bundle(deploy_bundle, "sagemaker", tmp_path / "sm", options=_opts(fake_wheel))
    assert (sm.out / "docker" / "Dockerfile").is_file() and (sm.out / "deploy.py").is_file()
    assert any(c.endswith(" serve   # local check: /ping, /invocations") for c in sm.commands)
    compile((sm.out / "deploy.py").read_text(), "deploy.py", "exec")
    vx = package_bundle(deploy_bundle, "vertex", tmp_path / "vx", options=_opts(fake_wheel))
    assert any("--container-predict-route=/predict" in c for c in vx.commands)
    az = package_bundle(deploy_bundle, "azureml", tmp_path / "az", options=_opts(fake_wheel))
    dep = yaml.safe_load((az.out / "deployment.yml").read_text())
    routes = dep["environment"]["inference_config"]
    assert routes["scoring_route"] == {"port": 8080, "path": "/score"}
    assert routes["readiness_route"]["path"] == "/readyz"


def test_ray_target(deploy_bundle: Path, tmp_path: Path) -> None:
    res = package_bundle(deploy_bundle, "ray", tmp_path / "r", options=PackageOptions(replicas=1))
    cfg = yaml.safe_load((res.out / "serve_config.yaml").read_text())
    assert cfg["http_options"]["host"] == "127.0.0.1"
    (appcfg,) = cfg["applications"]
    assert appcfg["import_path"] == "cvdeploy.deploy.ray:app_builder"
    assert appcfg["args"]["bundle"] == "bundle" and appcfg["args"]["artifact"] == "onnx-fp32"
    Bundle.load(res.out / "bundle")
    assert (
        "[::]" in (res.out / "README.md").read_text()
        or "all interfaces" in (res.out / "README.md").read_text()
    )


def test_package_cli(
    deploy_bundle: Path, fake_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = CliRunner().invoke(
        app,
        [
            "package",
            str(deploy_bundle),
            "--target",
            "docker",
            "--out",
            str(tmp_path / "d"),
            "--cvdeploy-wheel",
            str(fake_wheel),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["target"] == "docker" and "Dockerfile" in out["files"]
    r = CliRunner().invoke(
        app, ["package", str(deploy_bundle), "--target", "nomad", "--out", str(tmp_path / "e")]
    )
    assert r.exit_code == 2 and "unknown target" in r.output
    # no container engine: a clear error, exit 2, nothing written
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    r = CliRunner().invoke(
        app,
        [
            "package",
            str(deploy_bundle),
            "--target",
            "docker",
            "--out",
            str(tmp_path / "f"),
            "--build",
            "--cvdeploy-wheel",
            str(fake_wheel),
        ],
    )
    assert r.exit_code == 2 and "no container engine" in r.output
    assert "apt-get install" in r.output and not (tmp_path / "f").exists()


def test_find_engine_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cvdeploy.deploy import find_engine

    with pytest.raises(UsageError, match="unknown container engine"):
        find_engine("lxc")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailable, match="podman: not installed"):
        find_engine()
    assert shutil.which("podman") is None


def test_podman_runtime_follows_the_cgroup_layout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """crun refuses hybrid cgroups ("cgroups in hybrid mode not supported"): there podman
    is given runc even when crun is installed; on a pure v2 host crun stays the default."""
    from cvdeploy.deploy.engine import cgroups_hybrid, engine_argv

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("crun", "runc"):
        exe = bin_dir / tool
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    hybrid = tmp_path / "hybrid"
    (hybrid / "unified").mkdir(parents=True)
    (hybrid / "memory").mkdir()
    pure_v2 = tmp_path / "v2"
    pure_v2.mkdir()
    (pure_v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    assert cgroups_hybrid(hybrid) and not cgroups_hybrid(pure_v2)
    assert "--runtime=runc" in engine_argv("podman", hybrid)
    assert "--runtime=runc" not in engine_argv("podman", pure_v2)
    (bin_dir / "crun").unlink()  # no crun: runc whatever the layout
    assert "--runtime=runc" in engine_argv("podman", pure_v2)
    assert engine_argv("docker", hybrid) == ("docker",)
