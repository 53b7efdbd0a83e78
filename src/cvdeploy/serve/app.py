"""The HTTP inference server: a FastAPI app built by :func:`create_app` (no module state).

Routes (every one but ``/healthz`` and ``/readyz`` declares a permission through
:func:`require`, recorded as ``x-permission`` in its OpenAPI operation):

===========================================  ===========  ===================================
``POST /v1/models/{name}/predict``           predict      detections / classes, or a JPEG
``GET /v1/models``, ``/v1/models/{name}``    read         versions, spec, metrics, latency
``POST /v1/models/{name}/reload``            reload       reload the target version now
``GET /metrics``                             metrics      Prometheus text format
``GET /v1/stats``, ``/dashboard``            metrics      live stats, and the HTML dashboard
``GET /openapi.json``, ``/docs``             docs         OpenAPI schema, Swagger UI
``GET /healthz``, ``/readyz``                (none)       alive; model loaded and warmed up
===========================================  ===========  ===================================

With ``config.platform`` set, :mod:`cvdeploy.serve.platforms` adds a cloud platform's routes
(SageMaker, Vertex AI, Azure ML). With ``config.security`` set,
:func:`cvdeploy.serve.authorizer.install_security` adds authentication, roles, the audit
log, rate limits and the ``/v1/auth``, ``/v1/admin`` routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cvdeploy.errors import ApiError, CvdeployError
from cvdeploy.pipeline.predictor import StageTimes
from cvdeploy.serve.config import ServeConfig
from cvdeploy.serve.inputs import PixelBudget, json_depth_ok
from cvdeploy.serve.logging_store import RequestLog
from cvdeploy.serve.models import ModelManager, PredictorFactory
from cvdeploy.serve.monitoring import LiveStats, ServeMetrics
from cvdeploy.serve.routes import add_routes
from cvdeploy.serve.state import PUBLIC_ROUTES, ServeState, method_label, require
from cvdeploy.version import __version__

__all__ = ["PUBLIC_ROUTES", "ServeState", "create_app", "require"]

_log = logging.getLogger(__name__)


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
    state.decode_budget = PixelBudget(config.decode_budget_pixels)
    if config.drift.enabled and config.drift.sample_rate > 0:
        from cvdeploy.serve.drift import DriftMonitor

        state.drift = DriftMonitor(config.drift, metrics)

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
            if state.drift is not None:
                await asyncio.to_thread(state.drift.close)
            if state.background:  # sampled-request writes still in flight
                await asyncio.gather(*state.background, return_exceptions=True)

    app = FastAPI(
        title="cvdeploy inference server",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.cvdeploy = state
    app.add_middleware(_BodyGuard, max_bytes=config.max_json_bytes)
    app.add_middleware(_MetricsMiddleware, metrics=metrics, stats=stats)
    app.add_middleware(_HeadAsGet)
    _add_error_handlers(app)
    add_routes(app)
    if config.platform is not None:
        from cvdeploy.serve.platforms import add_platform_routes

        add_platform_routes(app, config.platform)
    if config.security is not None:
        from cvdeploy.serve.authorizer import install_security

        install_security(app, config.security)
    return app


# errors ---------------------------------------------------------------------------------------
def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _add_error_handlers(app: FastAPI) -> None:
    """Answer every error as JSON ``{"error": {"code", "message"}}``.

    One handler serves the whole :class:`CvdeployError` hierarchy from the error's own
    attributes (status, code, headers; Starlette picks it for every subclass through the
    MRO); framework errors and unexpected exceptions have their own.
    """
    retry = str(app.state.cvdeploy.config.retry_after_s)

    async def cvdeploy_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CvdeployError)
        headers = dict(exc.headers)
        if exc.retry_after:
            headers.setdefault("Retry-After", retry)
        if exc.http_status == 500:  # a server fault (503/504 are load, not faults)
            _log.error("request failed: %s", exc)
        return _error(exc.http_status, exc.code, exc.public_message, headers or None)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _error(exc.status_code, "http_error", str(exc.detail), exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return _error(422, "invalid_parameter", problems)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Known failures are CvdeployErrors; anything else is a bug: logged with its
        # traceback on the server, answered as JSON without internals.
        _log.error("unexpected error on %s", request.url.path, exc_info=exc)
        return _error(500, "internal_error", "internal error; the server log has the details")

    app.add_exception_handler(Exception, unexpected)
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
            method = method_label(scope.get("cvdeploy_method", scope.get("method")))
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path).observe(dt)
            if path.endswith("/predict"):
                self.stats.request(dt, status)


class _HeadAsGet:
    """Answers ``HEAD`` like ``GET`` without the body (as Starlette does for plain routes):
    the headers, status and ``Content-Length`` of the ``GET`` answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        # in place: the audit middleware outside sees the route and caller of this request
        scope["method"], scope["cvdeploy_method"] = "GET", "HEAD"
        await self.app(scope, receive, headers_only)


_PREDICT_PATH = re.compile(r"^/v1/models/[^/]+/predict/?$")


class _BodyGuard:
    """Bounds the bodies of every route but predict (which has ``max_body_bytes`` and its
    own JSON parser): at most ``max_bytes`` (413), and a JSON body nested at most
    :data:`cvdeploy.serve.inputs.MAX_JSON_DEPTH` deep (400), checked before any parser
    sees it. A deeply nested or huge JSON body is answered as bad input, never a 500."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _PREDICT_PATH.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(send, self._too_large())
            return
        chunks, n, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            n += len(message.get("body", b""))
            if n > self.max_bytes:
                await _refuse(send, self._too_large())
                return
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if body and ctype.endswith(b"json") and not json_depth_ok(body):
            await _refuse(
                send, ApiError(400, "bad_json", "the JSON body is nested too deeply to parse")
            )
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            "body_too_large",
            f"request body exceeds the limit of {self.max_bytes} bytes for this route",
        )


async def _refuse(send: Send, exc: ApiError) -> None:
    body = json.dumps({"error": {"code": exc.code, "message": exc.message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.http_status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
