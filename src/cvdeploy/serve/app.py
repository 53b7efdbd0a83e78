"""The HTTP inference server: a FastAPI app built by :func:`create_app` (no module state).

Routes (every one but ``/healthz`` and ``/readyz`` declares a permission through
:func:`require`, recorded as ``x-permission`` in its OpenAPI operation):

===========================================  ===========  ===================================
``POST /v1/models/{name}/predict``           predict      detections / classes, or a JPEG
``GET /v1/models``, ``/v1/models/{name}``    read         versions, spec, metrics, latency
``POST /v1/models/{name}/reload``            admin        reload the target version now
``GET /metrics``                             metrics      Prometheus text format
``GET /v1/stats``, ``/dashboard``            metrics      live stats, and the HTML dashboard
``GET /openapi.json``, ``/docs``             docs         OpenAPI schema, Swagger UI
``GET /healthz``, ``/readyz``                (none)       alive; model loaded and warmed up
===========================================  ===========  ===================================
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cvdeploy import __version__
from cvdeploy.errors import CvdeployError, ImageDecodeError, UsageError
from cvdeploy.pipeline.draw import draw as draw_result
from cvdeploy.pipeline.predictor import StageTimes, Thresholds
from cvdeploy.pipeline.results import Classification
from cvdeploy.serve.batching import DeadlineExceeded, Draining, Overloaded
from cvdeploy.serve.config import ServeConfig
from cvdeploy.serve.inputs import ApiError, DecodedImage, decode_checked, read_body, split_images
from cvdeploy.serve.logging_store import RequestLog
from cvdeploy.serve.models import LoadedVersion, ModelManager, PredictorFactory
from cvdeploy.serve.monitoring import LiveStats, ServeMetrics

__all__ = ["PUBLIC_ROUTES", "ServeState", "create_app", "require"]

_log = logging.getLogger(__name__)
PUBLIC_ROUTES = frozenset({"/healthz", "/readyz"})
"""Routes that declare no permission (probes)."""

Authorizer = Callable[[Request, str], Awaitable[None]]


async def allow_all(request: Request, permission: str) -> None:
    """The default authorizer: every permission is granted (no authentication yet)."""


def require(permission: str) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that checks ``permission`` with the app's authorizer.

    The authorizer is ``app.state.cvdeploy.authorize`` (default: allow everything), so a
    security layer replaces one function instead of touching every route.
    """

    async def dependency(request: Request) -> None:
        await _state(request).authorize(request, permission)

    dependency.permission = permission  # type: ignore[attr-defined]
    return dependency


@dataclass(slots=True)
class ServeState:
    """Everything the routes share, stored on ``app.state.cvdeploy``."""

    config: ServeConfig
    metrics: ServeMetrics
    stats: LiveStats
    manager: ModelManager
    log: RequestLog | None
    authorize: Authorizer = allow_all
    background: set[asyncio.Task[Any]] = field(default_factory=set)


def _state(request: Request) -> ServeState:
    st: ServeState = request.app.state.cvdeploy
    return st


def create_app(
    config: ServeConfig, *, predictor_factory: PredictorFactory | None = None
) -> FastAPI:
    """Build the server for a bundle or registry.

    Models load and warm up in the background once the app starts (``/readyz`` turns 200
    when done); a registry is then polled for promotions and rollbacks.

    Args:
        config: The server configuration.
        predictor_factory: Builds the predictors of a bundle (default: one per worker on
            the configured artifact); tests and embedders use it to wrap runners.
    """
    metrics = ServeMetrics()
    stats = LiveStats()

    def on_batch(name: str, n: int, times: StageTimes) -> None:
        metrics.batch_size.labels(name).observe(n)
        for stage, ms in times.per_image().items():
            metrics.stage.labels(name, stage).observe(ms / 1e3)
        stats.batch(n)

    manager = ModelManager(config, metrics=metrics, factory=predictor_factory, on_batch=on_batch)
    log = None
    if config.sample_rate > 0 and config.log_dir is not None:
        log = RequestLog(
            config.log_dir, sample_rate=config.sample_rate, max_bytes=config.log_max_bytes
        )
    state = ServeState(config, metrics, stats, manager, log)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def run() -> None:
            await manager.start()
            await manager.follow()

        task = asyncio.create_task(run(), name="cvdeploy-models")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await manager.close()

    app = FastAPI(
        title="cvdeploy inference server",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.cvdeploy = state
    app.add_middleware(_MetricsMiddleware, metrics=metrics, stats=stats)
    _add_error_handlers(app)
    _add_routes(app)
    return app


# errors ---------------------------------------------------------------------------------------
def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _add_error_handlers(app: FastAPI) -> None:
    retry = str(app.state.cvdeploy.config.retry_after_s)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc.status, exc.code, exc.message, exc.headers)

    async def cvdeploy_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CvdeployError)
        if isinstance(exc, Overloaded | Draining):
            return _error(503, "overloaded", str(exc.message), {"Retry-After": retry})
        if isinstance(exc, DeadlineExceeded):
            return _error(504, "deadline_exceeded", exc.message)
        if isinstance(exc, ImageDecodeError):
            return _error(400, "bad_image", exc.message)
        if isinstance(exc, UsageError):
            return _error(400, "bad_request", str(exc))
        _log.error("request failed: %s", exc)
        return _error(500, "server_error", str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _error(exc.status_code, "http_error", str(exc.detail), exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return _error(422, "invalid_parameter", problems)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(CvdeployError, cvdeploy_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


class _MetricsMiddleware:
    """Counts requests by route template and status, and times them (pure ASGI)."""

    def __init__(self, app: ASGIApp, *, metrics: ServeMetrics, stats: LiveStats) -> None:
        self.app = app
        self.metrics = metrics
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            dt = time.perf_counter() - t0
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(path, scope.get("method", "?"), str(status)).inc()
            self.metrics.latency.labels(path).observe(dt)
            if path.endswith("/predict"):
                self.stats.request(dt, status)


# routes ---------------------------------------------------------------------------------------
def _add(
    app: FastAPI,
    path: str,
    endpoint: Callable[..., Any],
    *,
    methods: list[str],
    permission: str | None,
    openapi_extra: dict[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """Add a route that declares its permission (dependency + OpenAPI ``x-permission``)."""
    extra = dict(openapi_extra or {})
    deps = []
    if permission is not None:
        extra["x-permission"] = permission
        deps.append(Depends(require(permission)))
    app.add_api_route(
        path, endpoint, methods=methods, dependencies=deps, openapi_extra=extra or None, **kwargs
    )


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


def _model(st: ServeState, name: str) -> LoadedVersion:
    loaded = st.manager.current.get(name)
    if loaded is not None:
        return loaded
    if name in st.manager.errors or not st.manager.ready:
        raise ApiError(
            503,
            "model_not_ready",
            f"model {name!r} is not loaded yet"
            + (f": {st.manager.errors[name]}" if name in st.manager.errors else ""),
            headers={"Retry-After": str(st.config.retry_after_s)},
        )
    known = ", ".join(sorted(st.manager.current)) or "none"
    raise ApiError(404, "unknown_model", f"model {name!r} is not served (models: {known})")


def _add_routes(app: FastAPI) -> None:
    async def healthz() -> dict[str, Any]:
        return {"status": "alive", "version": __version__}

    async def readyz(request: Request) -> Response:
        st = _state(request)
        models = {n: m.version for n, m in st.manager.current.items()}
        if st.manager.ready and models:
            return JSONResponse({"ready": True, "models": models})
        return JSONResponse(
            {"ready": False, "models": models, "errors": st.manager.errors}, status_code=503
        )

    async def predict(
        request: Request,
        name: str,
        conf: float | None = Query(None, ge=0, le=1, description="confidence threshold"),
        iou: float | None = Query(None, ge=0, le=1, description="NMS IoU threshold"),
        max_det: int | None = Query(None, ge=1, le=10_000, description="most detections"),
        draw: bool = Query(False, description="answer an annotated JPEG (one image)"),
    ) -> Response:
        st = _state(request)
        cfg = st.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.request_timeout_s
        _model(st, name)  # 404 / 503 before reading the body
        t0 = time.perf_counter()
        body = await read_body(request, limit=cfg.max_body_bytes)
        parts = await split_images(request, body, max_images=cfg.max_images)
        if draw and len(parts) != 1:
            raise ApiError(400, "draw_needs_one_image", "draw=true takes exactly one image")
        images = await asyncio.to_thread(
            lambda: [decode_checked(s, d, max_pixels=cfg.max_pixels) for s, d in parts]
        )
        t_decode = (time.perf_counter() - t0) * 1e3
        model = _model(st, name)  # re-read: a switch may have happened while decoding
        futures = model.batcher.submit(
            [im.image for im in images],
            Thresholds(conf=conf, iou=iou, max_det=max_det),
            deadline=deadline,
        )
        st.metrics.queue_depth.labels(name).set(model.batcher.depth)
        try:
            outs = await asyncio.wait_for(asyncio.gather(*futures), deadline - loop.time())
        except TimeoutError:
            raise DeadlineExceeded(
                f"no answer within the request deadline of {cfg.request_timeout_s} s"
            ) from None
        finally:
            st.metrics.queue_depth.labels(name).set(model.batcher.depth)
        results = [r for r, _ in outs]
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
        headers = {"X-Model-Version": model.version, "X-Model-Artifact": model.artifact_id}
        if draw:
            canvas = draw_result(images[0].image, results[0], model.names)
            ok, jpg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise ApiError(500, "encode_failed", "the annotated image could not be encoded")
            return Response(jpg.tobytes(), media_type="image/jpeg", headers=headers)
        return JSONResponse(
            {
                "model": name,
                "version": model.version,
                "artifact": model.artifact_id,
                "results": payload,
                "timings_ms": timings,
            },
            headers=headers,
        )

    async def list_models(request: Request) -> dict[str, Any]:
        st = _state(request)
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
            ],
            "errors": st.manager.errors,
        }

    async def get_model(request: Request, name: str) -> dict[str, Any]:
        st = _state(request)
        info = _model(st, name).describe()
        info["registry"] = await asyncio.to_thread(st.manager.registry_info, name)
        info["last_error"] = st.manager.errors.get(name)
        return info

    async def reload_model(request: Request, name: str) -> Response:
        st = _state(request)
        targets = await asyncio.to_thread(st.manager.targets)
        if name not in targets:
            raise ApiError(404, "unknown_model", f"model {name!r} has no production version")
        outcome = (await st.manager.sync(force=name)).get(name, "unchanged")
        cur = st.manager.current.get(name)
        body = {
            "model": name,
            "outcome": outcome,
            "version": cur.version if cur else None,
            "error": st.manager.errors.get(name),
        }
        return JSONResponse(body, status_code=409 if outcome == "failed" else 200)

    async def prometheus(request: Request) -> Response:
        st = _state(request)
        for n, m in st.manager.current.items():
            st.metrics.queue_depth.labels(n).set(m.batcher.depth)
        return Response(st.metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def live_stats(request: Request) -> dict[str, Any]:
        st = _state(request)
        snap = st.stats.snapshot()
        snap["models"] = [
            {
                **{k: v for k, v in m.describe().items() if k != "spec"},
                "queue_depth": m.batcher.depth,
                "inflight": m.batcher.inflight,
            }
            for m in st.manager.current.values()
        ]
        snap["errors"] = st.manager.errors
        snap["sampling"] = {"rate": st.config.sample_rate, "enabled": st.log is not None}
        return snap

    async def dashboard() -> HTMLResponse:
        page = importlib.resources.files("cvdeploy.serve.dashboard") / "index.html"
        return HTMLResponse(page.read_text(encoding="utf-8"))

    async def openapi(request: Request) -> dict[str, Any]:
        schema: dict[str, Any] = request.app.openapi()
        return schema

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="cvdeploy API")

    _add(app, "/healthz", healthz, methods=["GET"], permission=None)
    _add(app, "/readyz", readyz, methods=["GET"], permission=None)
    _add(
        app,
        "/v1/models/{name}/predict",
        predict,
        methods=["POST"],
        permission="predict",
        openapi_extra=_PREDICT_BODY,
    )
    _add(app, "/v1/models", list_models, methods=["GET"], permission="read")
    _add(app, "/v1/models/{name}", get_model, methods=["GET"], permission="read")
    _add(app, "/v1/models/{name}/reload", reload_model, methods=["POST"], permission="admin")
    _add(app, "/metrics", prometheus, methods=["GET"], permission="metrics")
    _add(app, "/v1/stats", live_stats, methods=["GET"], permission="metrics")
    _add(
        app, "/dashboard", dashboard, methods=["GET"], permission="metrics", include_in_schema=False
    )
    _add(app, "/openapi.json", openapi, methods=["GET"], permission="docs", include_in_schema=False)
    _add(app, "/docs", docs, methods=["GET"], permission="docs", include_in_schema=False)


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
