"""Cloud platforms' container contracts (SageMaker, Vertex AI, Azure ML) on the same server,
each tested with the requests that platform sends."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from cvdeploy.errors import UsageError
from cvdeploy.serve.platforms import detect_platform, resolve_platform
from tests.serve.conftest import route_permissions, serving


def _same(a: list[dict], b: list[dict]) -> None:
    assert [d["class_id"] for d in a] == [d["class_id"] for d in b]
    for x, y in zip(a, b, strict=True):
        assert x["box"] == y["box"] and abs(x["score"] - y["score"]) < 1e-6


def test_detect_and_resolve() -> None:
    assert detect_platform({}) is None
    assert detect_platform({"AIP_HTTP_PORT": "8080"}) == "vertex"
    assert detect_platform({"AZUREML_MODEL_DIR": "/var/azureml-app/m"}) == "azureml"
    assert detect_platform({"SAGEMAKER_BIND_TO_PORT": "9000"}) == "sagemaker"
    assert detect_platform({"CVDEPLOY_PLATFORM": "sagemaker", "AIP_HTTP_PORT": "1"}) == "sagemaker"
    assert resolve_platform("none", {"AIP_HTTP_PORT": "1"}) is None
    assert resolve_platform("auto", {}) is None
    sm = resolve_platform("sagemaker", {})
    assert sm is not None and (sm.port, sm.predict_route, sm.health_route) == (
        8080,
        "/invocations",
        "/ping",
    )
    assert str(sm.model_dir) == "/opt/ml/model"
    env = {
        "AIP_HTTP_PORT": "7080",
        "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict",
        "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2",
    }
    vx = resolve_platform("auto", env)
    assert vx is not None and vx.name == "vertex" and vx.port == 7080
    assert vx.predict_route == env["AIP_PREDICT_ROUTE"]
    az = resolve_platform("auto", {"AZUREML_MODEL_DIR": "/m"})
    assert az is not None and (az.port, az.predict_route, str(az.model_dir)) == (
        8080,
        "/score",
        "/m",
    )
    with pytest.raises(UsageError, match="unknown platform"):
        resolve_platform("heroku", {})
    with pytest.raises(UsageError, match="not a port"):
        resolve_platform("vertex", {"AIP_HTTP_PORT": "eighty"})


def test_sagemaker_contract(tiny_bundle: Path, jpeg: bytes) -> None:
    plat = resolve_platform("sagemaker", {})
    with serving(tiny_bundle, platform=plat) as c:
        route_permissions(c.app)  # the platform's probe is public, its predict guarded
        assert c.get("/ping").status_code == 200
        ref = c.post(
            "/v1/models/tiny/predict", content=jpeg, headers={"content-type": "image/jpeg"}
        )
        for ctype in ("image/jpeg", "application/x-image", "application/octet-stream"):
            r = c.post("/invocations", content=jpeg, headers={"content-type": ctype})
            assert r.status_code == 200, r.text
            assert r.headers["x-model-version"] == "bundle"
            _same(r.json()["results"][0]["detections"], ref.json()["results"][0]["detections"])
        r = c.post(
            "/invocations",
            json={"images": [base64.b64encode(jpeg).decode()]},
        )
        assert r.status_code == 200 and len(r.json()["results"]) == 1
        # thresholds through SageMaker's custom attributes
        r = c.post(
            "/invocations",
            content=jpeg,
            headers={
                "content-type": "image/jpeg",
                "X-Amzn-SageMaker-Custom-Attributes": "conf=0.99",
            },
        )
        assert r.status_code == 200
        assert all(d["score"] >= 0.99 for d in r.json()["results"][0]["detections"])
        bad = c.post(
            "/invocations",
            content=jpeg,
            headers={"content-type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "conf=2"},
        )
        assert bad.status_code == 400 and "conf" in bad.json()["error"]["message"]
        assert (
            c.post("/invocations", content=b"", headers={"content-type": "text/csv"}).status_code
            == 415
        )
        assert (
            c.post(
                "/invocations", content=b"nope", headers={"content-type": "image/jpeg"}
            ).status_code
            == 415
        )


def test_vertex_contract(tiny_bundle: Path, jpeg: bytes) -> None:
    env = {
        "AIP_HTTP_PORT": "8080",
        "AIP_PREDICT_ROUTE": "/v1/endpoints/e/deployedModels/d:predict",
        "AIP_HEALTH_ROUTE": "/v1/endpoints/e/deployedModels/d",
    }
    plat = resolve_platform("auto", env)
    with serving(tiny_bundle, platform=plat) as c:
        route_permissions(c.app)
        assert c.get(env["AIP_HEALTH_ROUTE"]).status_code == 200
        b64 = base64.b64encode(jpeg).decode()
        ref = c.post(
            "/v1/models/tiny/predict", content=jpeg, headers={"content-type": "image/jpeg"}
        )
        r = c.post(
            env["AIP_PREDICT_ROUTE"],
            json={"instances": [{"b64": b64}, {"image": {"b64": b64}}, b64]},
        )
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert set(r.json()) == {"predictions"} and len(preds) == 3
        for p in preds:
            _same(p["detections"], ref.json()["results"][0]["detections"])
        r = c.post(
            env["AIP_PREDICT_ROUTE"],
            json={"instances": [{"b64": b64}], "parameters": {"conf": 0.99, "max_det": 1}},
        )
        assert r.status_code == 200 and len(r.json()["predictions"][0]["detections"]) <= 1
        for body, code in (
            ({"instances": []}, 400),
            ({"images": [b64]}, 400),
            ({"instances": [{"b64": "!!"}]}, 400),
            ({"instances": [{"b64": b64}], "parameters": {"temperature": 1}}, 400),
        ):
            bad = c.post(env["AIP_PREDICT_ROUTE"], json=body)
            assert bad.status_code == code, (body, bad.text)
            assert bad.json()["error"]["message"]


def test_azureml_contract(tiny_bundle: Path, jpeg: bytes) -> None:
    plat = resolve_platform("azureml", {"AZUREML_MODEL_DIR": str(tiny_bundle)})
    with serving(tiny_bundle, platform=plat) as c:
        route_permissions(c.app)
        assert c.get("/").status_code == 200
        r = c.post("/score", json={"image": base64.b64encode(jpeg).decode()})
        assert r.status_code == 200 and r.json()["model"] == "tiny"
        r = c.post("/score", files={"image": ("a.jpg", jpeg, "image/jpeg")})
        assert r.status_code == 200 and len(r.json()["results"]) == 1


def test_platform_probe_not_ready(tiny_bundle: Path) -> None:
    from tests.serve.conftest import slow_factory

    plat = resolve_platform("sagemaker", {})
    with serving(
        tiny_bundle, platform=plat, ready=False, factory=slow_factory(0, load_delay=2)
    ) as c:
        assert c.get("/ping").status_code == 503
        r = c.post("/invocations", content=b"x", headers={"content-type": "image/jpeg"})
        assert r.status_code == 503


def test_platform_routes_share_the_json_depth_check_and_the_pixel_budget(
    tiny_bundle: Path,
) -> None:
    """A Vertex body nested 5,000 deep is a 400 (not a crash), and the platforms' routes
    go through the same per-request pixel budget as /v1/models/{name}/predict (413)."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    env = {"AIP_HTTP_PORT": "8080", "AIP_PREDICT_ROUTE": "/p", "AIP_HEALTH_ROUTE": "/h"}
    plat = resolve_platform("auto", env)
    with serving(tiny_bundle, platform=plat, max_request_pixels=200_000, max_pixels=100_000) as c:
        deep = b'{"instances": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
        r = c.post("/p", content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json"
        assert "nested" in r.json()["error"]["message"]
        r = c.post("/p", json={"instances": [{"b64": b64}] * 3})
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "request_too_many_pixels"
        assert c.post("/p", json={"instances": [{"b64": b64}] * 2}).status_code == 200
