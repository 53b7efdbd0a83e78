"""The HTTP routes of the inference server (see :mod:`cvdeploy.serve.app` for the table)."""

from __future__ import annotations

import asyncio
import functools
import importlib.resources
import importlib.util
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
from fastapi import FastAPI, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)

from cvdeploy.errors import ApiError, DeadlineExceeded
from cvdeploy.pipeline.draw import draw as draw_result
from cvdeploy.pipeline.predictor import StageTimes, Thresholds
from cvdeploy.pipeline.results import Classification
from cvdeploy.serve.inputs import (
    DecodedImage,
    decode_checked,
    image_pixels,
    read_body,
    split_images,
)
from cvdeploy.serve.models import LoadedVersion
from cvdeploy.serve.state import (
    PAGE_HEADERS,
    ServeState,
    add_route,
    error_responses,
    model_scope,
    state_of,
)
from cvdeploy.version import __version__

__all__ = [
    "DOCS_ASSETS",
    "Prediction",
    "add_routes",
    "model_input_size",
    "public_errors",
    "public_text",
    "run_prediction",
]

_log = logging.getLogger(__name__)

DOCS_ASSETS = "/docs/assets"
"""Where the Swagger UI files are served from (the ``docs`` permission, like ``/docs``)."""

_ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
_ASSET_CACHE = {"Cache-Control": "public, max-age=86400"}


@functools.cache
def _docs_assets() -> dict[str, Path]:
    """The Swagger UI files shipped by ``fastapi-offline`` (serve extra), by file name."""
    try:
        spec = importlib.util.find_spec("fastapi_offline")
    except ImportError:
        spec = None
    if spec is None or spec.origin is None:
        return {}
    static = Path(spec.origin).parent / "static"
    names = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
    return {n: static / n for n in names if (static / n).is_file()}


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"images": {"type": "array", "items": {"type": "string"}}},
                }
            },
        },
    }
}


_ABS_PATH = re.compile(r"(?<![\w.~-])/(?:[\w.+~-]+/)*([\w.+~-]+)")
_MODEL_LABEL = re.compile(r'model="((?:[^"\\]|\\.)*)"')


def public_text(message: str) -> str:
    """``message`` without the server's absolute paths (each becomes ``.../NAME``).

    Load errors name the bundle files that failed; over HTTP, callers (viewers included)
    learn which file, not where the registry lives on the host.
    """
    return _ABS_PATH.sub(lambda m: f".../{m.group(1)}", message)


def public_errors(errors: dict[str, str], seen: frozenset[str] | None = None) -> dict[str, str]:
    """The model errors a caller may see (its model scope), with paths removed."""
    return {n: public_text(e) for n, e in errors.items() if seen is None or n in seen}


def _public_registry(info: dict[str, Any] | None) -> dict[str, Any] | None:
    """A registry entry without the absolute paths the bundles were added from."""
    if info is None:
        return None
    versions = {
        v: {k: x for k, x in (meta or {}).items() if k != "source"}
        for v, meta in (info.get("versions") or {}).items()
    }
    return {**info, "versions": versions}


def _only_models(text: bytes, seen: frozenset[str]) -> bytes:
    """Prometheus text without the samples labelled with a model outside ``seen``."""
    keep = []
    for line in text.decode("utf-8").splitlines():
        m = None if line.startswith("#") else _MODEL_LABEL.search(line)
        if m is None or m.group(1) in seen:
            keep.append(line)
    return ("\n".join(keep) + "\n").encode("utf-8")


def _model(st: ServeState, name: str) -> LoadedVersion:
    loaded = st.manager.current.get(name)
    if loaded is not None:
        return loaded
    if name in st.manager.errors or not st.manager.ready:
        raise ApiError(
            503,
            "model_not_ready",
            f"model {name!r} is not loaded yet"
            + (f": {public_text(st.manager.errors[name])}" if name in st.manager.errors else ""),
            headers={"Retry-After": str(st.config.retry_after_s)},
        )
    known = ", ".join(sorted(st.manager.current)) or "none"
    raise ApiError(404, "unknown_model", f"model {name!r} is not served (models: {known})")


def model_input_size(st: ServeState, name: str) -> tuple[int, int] | None:
    """The input size of a served model, for reduced JPEG decoding (404 / 503 if not served)."""
    return _model(st, name).predictors[0].imgsz


@dataclass(slots=True)
class Prediction:
    """One answered prediction request (see :func:`run_prediction`)."""

    model: LoadedVersion
    images: list[DecodedImage]
    results: list[Any]
    payload: list[dict[str, Any]]
    timings: dict[str, float]

    def body(self) -> dict[str, Any]:
        """The JSON answer of ``/v1/models/{name}/predict``."""
        return {
            "model": self.model.name,
            "version": self.model.version,
            "artifact": self.model.artifact_id,
            "results": self.payload,
            "timings_ms": self.timings,
        }

    def headers(self) -> dict[str, str]:
        """The version headers of every prediction answer."""
        return {"X-Model-Version": self.model.version, "X-Model-Artifact": self.model.artifact_id}


async def run_prediction(
    st: ServeState,
    name: str,
    parts: list[tuple[str, bytes]],
    thresholds: Thresholds,
    *,
    t0: float,
    fit: tuple[int, int] | None,
) -> Prediction:
    """Decode images, run them through the model's batcher, and record the answer.

    The one prediction path of ``/v1/models/{name}/predict`` and of the cloud platforms'
    routes (:mod:`cvdeploy.serve.platforms`): limits, deadline, metrics and request logs
    are the same whichever route a request came in by.

    Args:
        st: The server state.
        name: The model.
        parts: ``(source, encoded image)`` pairs of the request.
        thresholds: Post-processing overrides.
        t0: When the request started (``time.perf_counter()``), for its timings.
        fit: Model input size for reduced JPEG decoding (``None``: full decode).
    """
    cfg = st.config
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.request_timeout_s - (time.perf_counter() - t0)
    sizes = await asyncio.to_thread(lambda: [image_pixels(s, d) for s, d in parts])
    # an image over max_pixels is refused (413) by decode_checked before decoding
    pixels = sum(n for n in sizes if n <= cfg.max_pixels)
    if pixels > cfg.max_request_pixels:
        raise ApiError(
            413,
            "request_too_many_pixels",
            f"the {len(parts)} images of this request hold {pixels} pixels, over the "
            f"limit of {cfg.max_request_pixels} per request; send fewer or smaller images",
        )
    budget = st.decode_budget
    held = 0
    if budget is not None:
        held = await budget.acquire(pixels, timeout=deadline - loop.time())
    try:
        return await _answer(st, name, parts, thresholds, t0=t0, fit=fit, deadline=deadline)
    finally:
        if budget is not None:
            budget.release(held)


async def _answer(
    st: ServeState,
    name: str,
    parts: list[tuple[str, bytes]],
    thresholds: Thresholds,
    *,
    t0: float,
    fit: tuple[int, int] | None,
    deadline: float,
) -> Prediction:
    """Decode, batch, run and record one request (its pixels already held)."""
    cfg = st.config
    loop = asyncio.get_running_loop()
    images = await asyncio.to_thread(
        lambda: [decode_checked(s, d, max_pixels=cfg.max_pixels, fit=fit) for s, d in parts]
    )
    t_decode = (time.perf_counter() - t0) * 1e3
    model = _model(st, name)  # re-read: a switch may have happened while decoding
    futures = model.batcher.submit([im.image for im in images], thresholds, deadline=deadline)
    st.metrics.queue_depth.labels(name).set(model.batcher.depth)
    try:
        outs = await asyncio.wait_for(asyncio.gather(*futures), deadline - loop.time())
    except TimeoutError:
        raise DeadlineExceeded(
            f"no answer within the request deadline of {cfg.request_timeout_s} s"
        ) from None
    finally:
        st.metrics.queue_depth.labels(name).set(model.batcher.depth)
    results = [im.to_original(r) for im, (r, _) in zip(images, outs, strict=True)]
    times: StageTimes = outs[0][1]
    st.metrics.observe_results(name, results, model.names)
    st.stats.results(results, model.names)
    for im in images:
        w, h = im.size
        st.metrics.input_megapixels.labels(name).observe(w * h / 1e6)
    timings = {"decode": t_decode, **times.per_image()}
    timings["total"] = (time.perf_counter() - t0) * 1e3
    timings = {k: round(v, 3) for k, v in timings.items()}
    payload = [_result_dict(im, r, model.names) for im, r in zip(images, results, strict=True)]
    _record(st, model, images, payload, timings)
    if st.drift is not None:
        st.drift.observe(model, images, results, st.background)
    return Prediction(model, images, results, payload, timings)


def add_routes(app: FastAPI) -> None:
    async def healthz() -> dict[str, Any]:
        return {"status": "alive", "version": __version__}

    async def readyz(request: Request) -> Response:
        st = state_of(request)
        models = {n: m.version for n, m in st.manager.current.items()}
        if st.manager.ready and models:
            return JSONResponse({"ready": True, "models": models})
        return JSONResponse(
            {"ready": False, "models": models, "errors": public_errors(st.manager.errors)},
            status_code=503,
        )

    async def predict(
        request: Request,
        name: str,
        conf: float | None = Query(None, ge=0, le=1, description="confidence threshold"),
        iou: float | None = Query(None, ge=0, le=1, description="NMS IoU threshold"),
        max_det: int | None = Query(None, ge=1, le=10_000, description="most detections"),
        draw: bool = Query(False, description="answer an annotated JPEG (one image)"),
    ) -> Response:
        st = state_of(request)
        cfg = st.config
        fit = model_input_size(st, name)  # 404 / 503 before reading the body
        if draw or not cfg.reduced_decode:
            fit = None  # drawn images are answered at full size
        t0 = time.perf_counter()
        body = await read_body(request, limit=cfg.max_body_bytes)
        parts = await split_images(request, body, max_images=cfg.max_images)
        if draw and len(parts) != 1:
            raise ApiError(400, "draw_needs_one_image", "draw=true takes exactly one image")
        answer = await run_prediction(
            st, name, parts, Thresholds(conf=conf, iou=iou, max_det=max_det), t0=t0, fit=fit
        )
        headers = answer.headers()
        if draw:
            canvas = draw_result(answer.images[0].image, answer.results[0], answer.model.names)
            ok, jpg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise ApiError(500, "encode_failed", "the annotated image could not be encoded")
            return Response(jpg.tobytes(), media_type="image/jpeg", headers=headers)
        return JSONResponse(answer.body(), headers=headers)

    async def list_models(request: Request) -> dict[str, Any]:
        st = state_of(request)
        seen = model_scope(request)
        return {
            "models": [
                {
                    "name": n,
                    "version": m.version,
                    "artifact": m.artifact_id,
                    "task": m.bundle.spec.task,
                    "queue_depth": m.batcher.depth,
                }
                for n, m in sorted(st.manager.current.items())
                if seen is None or n in seen
            ],
            "errors": public_errors(st.manager.errors, seen),
        }

    async def get_model(request: Request, name: str) -> dict[str, Any]:
        st = state_of(request)
        info = _model(st, name).describe()
        registry = await asyncio.to_thread(st.manager.registry_info, name)
        info["registry"] = _public_registry(registry)
        info["last_error"] = public_errors(st.manager.errors).get(name)
        return info

    async def reload_model(request: Request, name: str) -> Response:
        st = state_of(request)
        targets = await asyncio.to_thread(st.manager.targets)
        if name not in targets:
            raise ApiError(404, "unknown_model", f"model {name!r} has no production version")
        outcome = (await st.manager.sync(force=name)).get(name, "unchanged")
        cur = st.manager.current.get(name)
        body = {
            "model": name,
            "outcome": outcome,
            "version": cur.version if cur else None,
            "error": public_errors(st.manager.errors).get(name),
        }
        return JSONResponse(body, status_code=409 if outcome == "failed" else 200)

    async def prometheus(request: Request) -> Response:
        st = state_of(request)
        for n, m in st.manager.current.items():
            st.metrics.queue_depth.labels(n).set(m.batcher.depth)
        text = st.metrics.exposition()
        seen = model_scope(request)
        if seen is not None:
            text = _only_models(text, seen)
        return Response(text, media_type="text/plain; version=0.0.4")

    async def live_stats(request: Request) -> dict[str, Any]:
        st = state_of(request)
        seen = model_scope(request)
        snap = st.stats.snapshot()
        snap["models"] = [
            {
                **{k: v for k, v in m.describe().items() if k != "spec"},
                "queue_depth": m.batcher.depth,
                "inflight": m.batcher.inflight,
            }
            for n, m in st.manager.current.items()
            if seen is None or n in seen
        ]
        snap["errors"] = public_errors(st.manager.errors, seen)
        snap["sampling"] = {"rate": st.config.sample_rate, "enabled": st.log is not None}
        if seen is not None:
            snap["recent"] = [r for r in snap["recent"] if r.get("model") in seen]
            if not set(st.manager.current) <= seen:  # the counts mix models it may not see
                snap["classes"] = {}
                snap["confidence_bins"] = [0] * len(snap["confidence_bins"])
            snap["scoped_to"] = sorted(seen)
        snap["drift"] = (
            st.drift.snapshot(
                [m for n, m in st.manager.current.items() if seen is None or n in seen]
            )
            if st.drift is not None
            else None
        )
        return snap

    async def dashboard() -> HTMLResponse:
        page = importlib.resources.files("cvdeploy.serve.dashboard") / "index.html"
        return HTMLResponse(page.read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    async def openapi(request: Request) -> dict[str, Any]:
        schema: dict[str, Any] = request.app.openapi()
        return schema

    async def docs() -> HTMLResponse:
        # Swagger UI from the server itself (fastapi-offline's copy), never from a CDN.
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="cvdeploy API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
        )
        page.headers.update(PAGE_HEADERS)
        return page

    async def docs_asset(asset: str) -> Response:
        path = _docs_assets().get(asset)
        if path is None:
            raise ApiError(
                404,
                "not_found",
                f"no documentation asset {asset!r} (the Swagger UI files come with "
                "fastapi-offline: pip install 'cvdeploy[serve]')",
            )
        return FileResponse(path, media_type=_ASSET_TYPES[path.suffix], headers=_ASSET_CACHE)

    add_route(app, "/healthz", healthz, methods=["GET"], permission=None)
    add_route(
        app, "/readyz", readyz, methods=["GET"], permission=None, responses=error_responses(503)
    )
    add_route(
        app,
        "/v1/models/{name}/predict",
        predict,
        methods=["POST"],
        permission="predict",
        openapi_extra=_PREDICT_BODY,
        responses={
            200: {
                "description": "detections or classes (JSON), or the drawn image (draw=true)",
                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            },
            **error_responses(400, 404, 413, 415, 503, 504),
        },
    )
    add_route(app, "/v1/models", list_models, methods=["GET"], permission="read")
    add_route(
        app,
        "/v1/models/{name}",
        get_model,
        methods=["GET"],
        permission="read",
        responses=error_responses(400, 404, 503),
    )
    add_route(
        app,
        "/v1/models/{name}/reload",
        reload_model,
        methods=["POST"],
        permission="reload",
        responses={
            409: {"description": "the version failed to load (the current one keeps serving)"},
            **error_responses(400, 404),
        },
    )
    add_route(
        app,
        "/metrics",
        prometheus,
        methods=["GET"],
        permission="metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    add_route(app, "/v1/stats", live_stats, methods=["GET"], permission="metrics")
    add_route(
        app, "/dashboard", dashboard, methods=["GET"], permission="metrics", include_in_schema=False
    )
    add_route(
        app, "/openapi.json", openapi, methods=["GET"], permission="docs", include_in_schema=False
    )
    add_route(app, "/docs", docs, methods=["GET"], permission="docs", include_in_schema=False)
    add_route(
        app,
        DOCS_ASSETS + "/{asset}",
        docs_asset,
        methods=["GET"],
        permission="docs",
        include_in_schema=False,
    )


def _result_dict(im: DecodedImage, result: Any, names: tuple[str, ...]) -> dict[str, Any]:
    w, h = im.size
    out: dict[str, Any] = {"image": im.source, "width": w, "height": h}
    if isinstance(result, Classification):
        out["classes"] = result.to_dicts(names)
    else:
        out["detections"] = result.to_dicts(names)
    return out


def _record(
    st: ServeState,
    model: LoadedVersion,
    images: list[DecodedImage],
    payload: list[dict[str, Any]],
    timings: dict[str, float],
) -> None:
    """Keep a dashboard thumbnail (rate-limited) and log sampled requests off the loop."""
    first = payload[0].get("detections", payload[0].get("classes", []))
    if st.stats.wants_recent():
        f = images[0].reduced  # the thumbnail comes from the (maybe reduced) decoded image
        if f > 1:
            first = [{**p, "box": [v / f for v in p["box"]]} if "box" in p else p for p in first]
        st.stats.add_recent(model.name, model.version, images[0].image, first)
    log = st.log
    if log is None or not log.sample():
        return

    def write() -> None:
        for im, p in zip(images, payload, strict=True):
            log.write(
                model=model.name,
                version=model.version,
                image=im.data,
                size=im.size,
                outputs=p,
                timings=timings,
            )

    task = asyncio.get_running_loop().create_task(asyncio.to_thread(write))
    st.background.add(task)
    task.add_done_callback(_done_logging(st))


def _done_logging(st: ServeState) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        st.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("request logging failed: %s", task.exception())

    return done
