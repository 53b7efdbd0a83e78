"""The HTTP server through the ASGI test client: predict, bad input, limits, metrics."""

from __future__ import annotations

import base64
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cvdeploy.errors import InputError, ModelLoadError, ShapeError, SpecError
from cvdeploy.serve.app import create_app
from cvdeploy.serve.config import ServeConfig
from cvdeploy.serve.inputs import ApiError
from tests.serve.conftest import ico_bytes, route_permissions, serving, slow_factory, wait_ready

RAW = {"content-type": "image/jpeg"}
PREDICT = "/v1/models/tiny/predict"


def _check_detections(result: dict, w: int = 80, h: int = 48) -> None:
    assert result["width"] == w and result["height"] == h
    assert result["detections"], "the tiny detector finds boxes on the test image"
    for d in result["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert -1 <= x1 < x2 <= w + 1 and -1 <= y1 < y2 <= h + 1  # original-image coordinates
        assert d["class_name"] == f"n{d['class_id']}"
        assert 0 <= d["score"] <= 1


def test_predict_raw_multipart_base64_and_draw(tiny_bundle: Path, jpeg: bytes) -> None:
    with serving(tiny_bundle) as c:
        r = c.post(PREDICT, content=jpeg, headers=RAW)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "tiny" and body["artifact"] == "onnx-fp32"
        assert set(body["timings_ms"]) >= {"decode", "preprocess", "inference", "total"}
        _check_detections(body["results"][0])
        raw_dets = body["results"][0]["detections"]

        files = [("files", ("a.jpg", jpeg, "image/jpeg")), ("files", ("b.jpg", jpeg, "image/jpeg"))]
        r = c.post(PREDICT, files=files)
        assert r.status_code == 200, r.text
        res = r.json()["results"]
        assert [x["image"] for x in res] == ["a.jpg", "b.jpg"]
        assert res[0]["detections"] == raw_dets  # same image, same answer, batched or not

        b64 = base64.b64encode(jpeg).decode()
        r = c.post(PREDICT, json={"images": [b64, "data:image/jpeg;base64," + b64]})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        r = c.post(PREDICT, json={"image": b64}, params={"conf": 0.99})
        assert r.status_code == 200 and r.json()["results"][0]["detections"] == []
        r = c.post(PREDICT, json={"image": b64}, params={"max_det": 1})
        assert len(r.json()["results"][0]["detections"]) == 1

        r = c.post(PREDICT, content=jpeg, headers=RAW, params={"draw": "true"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (48, 80, 3)
        assert r.headers["x-model-version"] == "bundle"


def test_bad_requests_are_4xx_and_server_keeps_serving(
    tmp_path: Path, tiny_bundle: Path, jpeg: bytes
) -> None:
    big = cv2.imencode(".png", np.zeros((400, 400, 3), np.uint8))[1].tobytes()
    with serving(tiny_bundle, max_body_bytes=16_384, max_pixels=50_000, max_images=2) as c:
        cases = [
            (dict(content=b"definitely not an image", headers=RAW), 415, "not_an_image"),
            (dict(content=jpeg[: len(jpeg) // 2], headers=RAW), 400, "bad_image"),
            (dict(content=b"", headers=RAW), 415, "not_an_image"),
            (dict(content=ico_bytes(), headers=RAW), 415, "unsupported_format"),
            (dict(content=b"x", headers={"content-type": "text/plain"}), 415, "unsupported"),
            (dict(content=b"\0" * 20_000, headers=RAW), 413, "body_too_large"),
            (dict(content=big, headers={"content-type": "image/png"}), 413, "too_many_pixels"),
            (dict(json={"images": ["@@not base64@@"]}), 400, "bad_base64"),
            (dict(content=b"{nope", headers={"content-type": "application/json"}), 400, "bad_json"),
            (dict(json={"images": []}), 400, "no_image"),
            (dict(files=[("f", ("a.jpg", jpeg, "image/jpeg"))] * 3), 400, ""),
        ]
        for kwargs, status, code in cases:
            r = c.post(PREDICT, **kwargs)
            assert r.status_code == status, (kwargs.get("headers"), r.status_code, r.text)
            assert code in r.json()["error"]["code"], r.text
            assert r.json()["error"]["message"]
        assert c.post("/v1/models/nope/predict", content=jpeg, headers=RAW).status_code == 404
        assert c.post(PREDICT, content=jpeg, headers=RAW, params={"conf": 2}).status_code == 422
        r = c.post(PREDICT, files=[("f", ("a.jpg", jpeg, "image/jpeg"))] * 2, params={"draw": 1})
        assert r.status_code == 400
        # still serving after all of that
        assert c.post(PREDICT, content=jpeg, headers=RAW).status_code == 200
        metrics = c.get("/metrics").text
        assert 'status="415"' in metrics and 'status="413"' in metrics
        assert 'status="500"' not in metrics


def test_overload_answers_503_with_retry_after(tiny_bundle: Path, jpeg: bytes) -> None:
    with serving(
        tiny_bundle, factory=slow_factory(0.3), queue_size=1, max_batch=1, warmup_runs=0
    ) as c:

        def call(_: int) -> tuple[int, str | None]:
            r = c.post(PREDICT, content=jpeg, headers=RAW)
            return r.status_code, r.headers.get("retry-after")

        with ThreadPoolExecutor(8) as ex:
            out = list(ex.map(call, range(8)))
        codes = [s for s, _ in out]
        assert 503 in codes and 200 in codes, codes
        assert set(codes) <= {200, 503}
        assert all(ra == "1" for s, ra in out if s == 503)
        assert c.post(PREDICT, content=jpeg, headers=RAW).status_code == 200


def test_deadline_answers_504(tiny_bundle: Path, jpeg: bytes) -> None:
    with serving(tiny_bundle, factory=slow_factory(0.6), request_timeout_s=0.2, warmup_runs=0) as c:
        r = c.post(PREDICT, content=jpeg, headers=RAW)
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        time.sleep(0.5)
        assert c.get("/healthz").status_code == 200


def test_dynamic_batching_groups_concurrent_requests(tiny_bundle: Path, jpeg: bytes) -> None:
    factory = slow_factory(0.15)
    with serving(tiny_bundle, factory=factory, max_batch=4, max_wait_ms=50, warmup_runs=0) as c:
        with ThreadPoolExecutor(8) as ex:
            codes = list(
                ex.map(lambda _: c.post(PREDICT, content=jpeg, headers=RAW).status_code, range(8))
            )
        assert codes == [200] * 8
        sizes = {int(k): v for k, v in c.get("/v1/stats").json()["batch_sizes"].items()}
        assert max(sizes) > 1, sizes
        assert max(sizes) <= 4
        assert "cvdeploy_batch_size_bucket" in c.get("/metrics").text


def test_readiness_waits_for_warmup(tiny_bundle: Path, jpeg: bytes) -> None:
    with serving(tiny_bundle, factory=slow_factory(0.0, load_delay=1.0), ready=False) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        r = c.post(PREDICT, content=jpeg, headers=RAW)
        assert r.status_code == 503 and r.headers["retry-after"]
        wait_ready(c)
        assert c.get("/readyz").json()["models"] == {"tiny": "bundle"}
        assert c.post(PREDICT, content=jpeg, headers=RAW).status_code == 200


def test_metrics_models_stats_dashboard(tiny_bundle: Path, jpeg: bytes) -> None:
    with serving(tiny_bundle) as c:
        for _ in range(3):
            assert c.post(PREDICT, content=jpeg, headers=RAW).status_code == 200
        text = c.get("/metrics").text
        for name in (
            'cvdeploy_requests_total{method="POST",route="/v1/models/{name}/predict",'
            'status="200"} 3.0',
            'cvdeploy_stage_latency_seconds_count{model="tiny",stage="inference"}',
            'cvdeploy_request_latency_seconds_bucket{le="0.001",route="/v1/models/{name}/predict"}',
            'cvdeploy_model_version_info{artifact="onnx-fp32",model="tiny",version="bundle"} 1.0',
            "cvdeploy_queue_depth",
            'cvdeploy_detections_per_image_count{model="tiny"} 3.0',
            "cvdeploy_confidence_bucket",
            'cvdeploy_predicted_class_total{class_name="n',
            'cvdeploy_input_megapixels_count{model="tiny"} 3.0',
        ):
            assert name in text, name
        models = c.get("/v1/models").json()["models"]
        assert models[0]["name"] == "tiny" and models[0]["version"] == "bundle"
        info = c.get("/v1/models/tiny").json()
        assert info["spec"]["names"] == ["n0", "n1", "n2"] and info["registry"] is None
        assert c.get("/v1/models/nope").status_code == 404
        stats = c.get("/v1/stats").json()
        assert stats["requests_in_window"] == 3 and stats["latency_ms"]["p50"] > 0
        assert stats["recent"] and stats["recent"][0]["image"].startswith("data:image/jpeg")
        assert sum(stats["confidence_bins"]) > 0
        page = c.get("/dashboard")
        assert page.status_code == 200 and "<canvas" in page.text and "/v1/stats" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing external
        schema = c.get("/openapi.json").json()
        assert "/v1/models/{name}/predict" in schema["paths"]


def test_docs_load_nothing_from_outside(tiny_bundle: Path) -> None:
    with serving(tiny_bundle, ready=False) as c:
        page = c.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
        assert len(urls) >= 3, urls  # script, stylesheet, favicon, the schema
        assert "http" not in page.text.lower().replace("http-equiv", ""), "a remote URL"
        for url in urls:
            assert url.startswith("/"), url
            r = c.get(url)
            assert r.status_code == 200 and len(r.content) > 100, (url, r.status_code)
        js = c.get("/docs/assets/swagger-ui-bundle.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert "SwaggerUIBundle" in js.text
        assert c.get("/docs/assets/nope.js").status_code == 404
        assert c.get("/docs/assets/..%2Fcore.py").status_code == 404


def test_two_apps_have_separate_metrics(tiny_bundle: Path) -> None:
    a = create_app(ServeConfig(source=tiny_bundle))
    b = create_app(ServeConfig(source=tiny_bundle))
    assert a.state.cvdeploy.metrics.registry is not b.state.cvdeploy.metrics.registry


def test_every_route_declares_a_permission(tiny_bundle: Path) -> None:
    app = create_app(ServeConfig(source=tiny_bundle))
    seen = {path for _, path in route_permissions(app)}
    assert {"/healthz", "/readyz", "/metrics", "/dashboard", "/v1/models/{name}/predict"} <= seen


def test_authorizer_is_called_for_guarded_routes(tiny_bundle: Path, jpeg: bytes) -> None:
    from fastapi.testclient import TestClient

    from cvdeploy.serve.inputs import ApiError

    app = create_app(ServeConfig(source=tiny_bundle, warmup_runs=0))
    asked: list[str] = []

    async def deny_metrics(request: object, permission: str) -> None:
        asked.append(permission)
        if permission == "metrics":
            raise ApiError(403, "forbidden", "no")

    app.state.cvdeploy.authorize = deny_metrics
    with TestClient(app) as c:
        wait_ready(c)
        assert c.get("/metrics").status_code == 403
        assert c.post(PREDICT, content=jpeg, headers=RAW).status_code == 200
    assert asked == ["metrics", "predict"]


def test_unexpected_inference_error_is_json_500(tiny_bundle: Path, jpeg: bytes) -> None:
    from cvdeploy.serve.models import default_predictors

    class Broken:
        def __init__(self, inner: object) -> None:
            self.inner = inner
            self.io = inner.io  # type: ignore[attr-defined]

        def load(self) -> None:
            self.inner.load()  # type: ignore[attr-defined]

        def run(self, x: object) -> object:
            raise RuntimeError("boom")

        def close(self) -> None:
            self.inner.close()  # type: ignore[attr-defined]

    def factory(bundle: object, config: object) -> list:
        preds = default_predictors(bundle, config)  # type: ignore[arg-type]
        for p in preds:
            p.runner = Broken(p.runner)  # type: ignore[assignment]
        return preds

    with serving(tiny_bundle, factory=factory, warmup_runs=0) as c:
        r = c.post(PREDICT, content=jpeg, headers=RAW)
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert "boom" not in r.text  # no internals leak
        assert c.get("/healthz").status_code == 200
        assert c.get("/v1/models").status_code == 200


def _raising_factory(exc: Exception) -> Any:
    """Predictors whose runner raises ``exc`` on every batch."""
    from cvdeploy.serve.models import default_predictors

    class Raising:
        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.io = inner.io

        def load(self) -> None:
            self.inner.load()

        def run(self, x: object) -> object:
            raise exc

        def close(self) -> None:
            self.inner.close()

    def factory(bundle: object, config: object) -> list:
        preds = default_predictors(bundle, config)  # type: ignore[arg-type]
        for p in preds:
            p.runner = Raising(p.runner)  # type: ignore[assignment]
        return preds

    return factory


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ShapeError("input 'images' takes (1, 3, 64, 64), got (1, 3, 64, 80)"), 400, "bad_shape"),
        (
            SpecError("decoder 'yolox' has no anchors to score", hint="check the spec"),
            400,
            "bad_spec",
        ),
        (InputError("the image cannot be used"), 400, "bad_input"),
        (ModelLoadError("CUDA call failed: 700"), 500, "server_error"),
    ],
)
def test_cvdeploy_errors_while_serving_answer_their_own_status(
    tiny_bundle: Path, jpeg: bytes, exc: Exception, status: int, code: str
) -> None:
    with serving(tiny_bundle, factory=_raising_factory(exc), warmup_runs=0) as c:
        r = c.post(PREDICT, content=jpeg, headers=RAW)
        assert r.status_code == status, r.text
        assert r.json() == {"error": {"code": code, "message": str(exc)}}
        assert c.get("/healthz").status_code == 200


def test_model_info_shows_manifest_metrics_and_latency(tmp_path: Path) -> None:
    from cvdeploy.bundle import Bundle, Check
    from tests.serve.conftest import make_bundle

    path = make_bundle(tmp_path)
    with Bundle.load(path).edit(action="test") as edit:
        edit.add_check(
            "onnx-fp32",
            Check(
                kind="metrics",
                name="coco8",
                data={"metrics": {"map50_95": 0.25}, "environment": {"cpu": "x"}},
            ),
        )
        edit.add_check(
            "onnx-fp32",
            Check(
                kind="latency",
                name="cpu-b1",
                data={"e2e_ms": {"p50": 3.0}, "batch": 1, "environment": {"cpu": "x"}},
            ),
        )
    with serving(path) as c:
        checks = c.get("/v1/models/tiny").json()["checks"]
        assert checks["metrics:coco8"]["summary"] == {"map50_95": 0.25}
        assert checks["latency:cpu-b1"]["summary"] == {"e2e_ms": {"p50": 3.0}, "batch": 1}
        stats_models = c.get("/v1/stats").json()["models"]
        assert stats_models[0]["checks"]["metrics:coco8"]["kind"] == "metrics"


def test_large_jpeg_is_decoded_reduced_with_boxes_in_sent_coordinates(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    from cvdeploy.serve.inputs import decode_checked, jpeg_reduction

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (900, 1200, 3), np.uint8)
    big = cv2.GaussianBlur(noise, (0, 0), 6)  # a photo-like image, not pixel noise
    cv2.rectangle(big, (100, 100), (1100, 800), (0, 200, 0), -1)
    data = cv2.imencode(".jpg", big)[1].tobytes()
    assert jpeg_reduction((1200, 900), (64, 64)) == 8
    assert jpeg_reduction((1200, 900), (416, 416)) == 2
    assert jpeg_reduction((1200, 900), (640, 640)) == 1
    im = decode_checked("a", data, max_pixels=10**8, fit=(64, 64))
    assert im.reduced == 8 and im.image.shape == (113, 150, 3) and im.size == (1200, 900)
    full = decode_checked("a", data, max_pixels=10**8)
    assert full.reduced == 1 and full.image.shape == (900, 1200, 3)
    png = cv2.imencode(".png", big)[1].tobytes()  # only JPEGs are decoded reduced
    assert decode_checked("a", png, max_pixels=10**8, fit=(64, 64)).reduced == 1
    with pytest.raises(ApiError) as err:  # a truncated JPEG is refused as before (400)
        decode_checked("a", data[: len(data) // 2], max_pixels=10**8, fit=(64, 64))
    assert err.value.status == 400

    answers = {}
    for reduced in (True, False):
        with serving(tiny_bundle, reduced_decode=reduced) as c:
            r = c.post(PREDICT, content=data, headers=RAW)
            assert r.status_code == 200, r.text
            answers[reduced] = r.json()["results"][0]
            drawn = c.post(PREDICT, content=data, headers=RAW, params={"draw": True})
            assert cv2.imdecode(np.frombuffer(drawn.content, np.uint8), 1).shape == big.shape
            recent = c.get("/v1/stats").json()["recent"][0]
            for d in recent["predictions"]:  # thumbnail boxes lie on the thumbnail
                x1, y1, x2, y2 = d["box"]
                assert 0 <= x1 <= x2 <= recent["width"] and 0 <= y1 <= y2 <= recent["height"]
    for res in answers.values():
        assert (res["width"], res["height"]) == (1200, 900) and res["detections"]
        for d in res["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= 1200 and 0 <= y1 < y2 <= 900
    # the same objects, in the same place (to within a reduced pixel or two)
    fast, exact = (sorted(answers[k]["detections"], key=lambda d: d["class_id"]) for k in answers)
    assert [d["class_id"] for d in fast] == [d["class_id"] for d in exact]
    for a, b in zip(fast, exact, strict=True):
        assert np.allclose(a["box"], b["box"], atol=24), (a, b)
        assert a["score"] == pytest.approx(b["score"], abs=0.05)


def test_rotated_jpeg_reports_the_rotated_size(tmp_path: Path) -> None:
    from PIL import Image

    from cvdeploy.serve.inputs import decode_checked

    img = Image.fromarray(np.full((600, 1000, 3), 90, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: shown as 600 wide, 1000 high
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    im = decode_checked("r", buf.getvalue(), max_pixels=10**8, fit=(64, 64))
    assert im.reduced == 8 and im.size == (600, 1000)
    assert im.image.shape[:2] == (125, 75)  # height, width after the rotation
