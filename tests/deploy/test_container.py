"""The server image, built and run for real (slow; `make package-test`).

Needs a container engine (podman or docker) and the local base image that
`tests/deploy/base_image.sh` makes (a Debian minbase with Python, imported; no registry is
reachable here). Skipped, saying which, when either is missing. Everything is installed in
the image from wheels downloaded into the build context (`--wheels`), the container runs
on the host network bound to 127.0.0.1, and the image, the containers and the pod are
removed by name at the end.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cvdeploy.cli.main import app
from cvdeploy.deploy import PackageOptions, find_engine, package_bundle
from cvdeploy.deploy.engine import CONTAINERS_CONF
from cvdeploy.errors import BackendUnavailable

pytestmark = pytest.mark.slow

BASE = os.environ.get("CVDEPLOY_TEST_BASE_IMAGE", "localhost/cvdeploy-base:bookworm")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, engine: Any, name: str, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = engine.run(["inspect", name, "--format", "{{.State.Status}}"], check=False)
        if state.returncode == 0 and state.stdout.strip() in ("exited", "stopped", "dead"):
            raise AssertionError(f"container {name} exited:\n{engine.logs(name)[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready after {timeout} s:\n{engine.logs(name)[-3000:]}")


def _post(url: str, data: bytes, ctype: str = "image/jpeg") -> dict[str, Any]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def engine() -> Any:
    try:
        eng = find_engine()
    except BackendUnavailable as exc:
        pytest.skip(f"no container engine: {exc.message}")
    if not eng.image_exists(BASE):
        pytest.skip(f"base image {BASE} is absent: run `make base-image` (debootstrap)")
    return eng


def test_image_built_run_and_answers_like_predict(
    engine: Any, deploy_bundle: Path, deploy_images: Path, tmp_path: Path
) -> None:
    tag = f"localhost/cvdeploy-test-{uuid.uuid4().hex[:8]}:1"
    name = f"cvdeploy-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        res = package_bundle(
            deploy_bundle,
            "docker",
            tmp_path / "ctx",
            options=PackageOptions(wheels=True, base=BASE),
        )
        assert "--no-index" in (res.out / "Dockerfile").read_text()  # offline: wheels only
        engine.build(res.out, tag, build_args={"BASE": BASE})
        size_mb = engine.image_size(tag) / 1e6
        print(f"\nimage {tag}: {size_mb:.0f} MB")  # the README quotes make package-test's
        assert size_mb < 700  # a guard against a runtime or torch creeping in
        inspect = engine.run(["image", "inspect", tag]).stdout
        assert "/readyz" in inspect  # the HEALTHCHECK is in the image
        port = _port()
        engine.run_detached(
            tag,
            name,
            env={"HOST": "127.0.0.1", "PORT": str(port), "CVDEPLOY_PLATFORM": "sagemaker"},
            args=(),
        )
        _wait_ready(f"http://127.0.0.1:{port}/readyz", engine, name)
        assert engine.run(["exec", name, "id", "-u"]).stdout.strip() == "10001"
        hc = engine.run(["healthcheck", "run", name], check=False)
        assert hc.returncode == 0, hc.stdout + hc.stderr
        r = CliRunner().invoke(app, ["predict", str(deploy_bundle), str(deploy_images), "--json"])
        want = {Path(p["image"]).name: p["results"] for p in json.loads(r.stdout)["predictions"]}
        for img in sorted(deploy_images.iterdir()):
            got = _post(f"http://127.0.0.1:{port}/v1/models/tiny/predict", img.read_bytes())
            assert got["results"][0]["detections"] == want[img.name], img.name
            sm = _post(f"http://127.0.0.1:{port}/invocations", img.read_bytes())
            assert sm["results"][0]["detections"] == want[img.name]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as ping:
            assert ping.status == 200
        engine.remove_container(name)
        # the Kubernetes Deployment, run by `podman kube play` (read-only root, non-root)
        if engine.name == "podman":
            _kube_play(engine, deploy_bundle, tag, tmp_path)
    finally:
        engine.remove_container(name)
        engine.remove_image(tag)


def _kube_play(engine: Any, bundle: Path, tag: str, tmp_path: Path) -> None:
    port = _port()
    k8s = package_bundle(
        bundle,
        "kubernetes",
        tmp_path / "k8s",
        options=PackageOptions(image=tag, replicas=1, cvdeploy_wheel=None, wheels=False),
    )
    dep = yaml.safe_load((k8s.out / "deployment.yaml").read_text())
    pod = dep["spec"]["template"]["spec"]
    # the test's loopback (host network, no port mapping); the manifests are otherwise as is
    pod["hostNetwork"] = True
    c = pod["containers"][0]
    c.pop("ports")
    for probe in ("readinessProbe", "livenessProbe"):
        c[probe]["httpGet"]["port"] = port
    for e in c["env"]:
        if e["name"] == "HOST":
            e["value"] = "127.0.0.1"
        if e["name"] == "PORT":
            e["value"] = str(port)
    play = tmp_path / "play.yaml"
    play.write_text(yaml.safe_dump(dep))
    conf = tmp_path / "containers.conf"
    conf.write_text(CONTAINERS_CONF)  # kube play takes no --ulimit
    env = {"CONTAINERS_CONF": str(conf)}
    volume = "tiny-config"  # kube play keeps a ConfigMap's volume after `kube down`
    engine.run(["volume", "rm", "-f", volume], check=False)
    try:
        engine.run(
            ["kube", "play", "--configmap", str(k8s.out / "configmap.yaml"), str(play)],
            timeout=180,
            env=env,
        )
        _wait_ready(f"http://127.0.0.1:{port}/readyz", engine, "tiny-pod-0-server")
        ps = engine.run(["ps", "--filter", "pod=tiny-pod-0", "--format", "{{.Names}}"]).stdout
        assert "server" in ps
    finally:
        engine.run(["kube", "down", str(play)], timeout=120, check=False, env=env)
        engine.run(["volume", "rm", "-f", volume], check=False)
