"""Cloud platforms' container contracts, answered by the same server.

One image serves everywhere: ``cvdeploy serve --platform auto`` reads the environment the
platform sets and adds its routes beside the cvdeploy ones (``/v1/models/...``,
``/healthz``, ``/readyz`` stay). Every route predicts through
:func:`cvdeploy.serve.routes.run_prediction`, so limits, batching, deadlines, metrics and
request logs are the same whichever contract a request came in by.

==========  ==============================  ===============================  ===========
platform    predict                         health (200 once ready)          port
==========  ==============================  ===============================  ===========
sagemaker   ``POST /invocations``           ``GET /ping``                    8080 [#]_
vertex      ``POST $AIP_PREDICT_ROUTE``     ``GET $AIP_HEALTH_ROUTE``        $AIP_HTTP_PORT
azureml     ``POST /score``                 ``GET /``                        $PORT, 8080
==========  ==============================  ===============================  ===========

.. [#] ``SAGEMAKER_BIND_TO_PORT`` when SageMaker sets it. Azure ML's own inference server
   uses 5001; a custom container names its port in the deployment's ``inference_config``
   (``cvdeploy package --target azureml`` writes 8080 there).

Bodies: SageMaker and Azure ML take what ``/v1/models/{name}/predict`` takes (an image as
``image/*``, ``application/x-image`` or ``application/octet-stream``, multipart files, or
JSON ``{"images": [base64, ...]}``) and answer the same JSON; SageMaker's thresholds come in
``X-Amzn-SageMaker-Custom-Attributes: conf=0.3,iou=0.6,max_det=100``. Vertex AI takes
``{"instances": [{"b64": ...}, ...], "parameters": {"conf": ...}}`` and answers
``{"predictions": [...]}``, one per instance.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cvdeploy import jsonsafe
from cvdeploy.errors import ApiError, UsageError
from cvdeploy.pipeline.predictor import Thresholds
from cvdeploy.serve.config import PLATFORMS, PlatformConfig
from cvdeploy.serve.inputs import read_body, split_images
from cvdeploy.serve.routes import model_input_size, run_prediction
from cvdeploy.serve.state import ServeState, add_route, state_of

__all__ = ["PLATFORMS", "add_platform_routes", "detect_platform", "resolve_platform"]

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
_RAW_TYPES = ("application/x-image",)


def detect_platform(environ: Mapping[str, str]) -> str | None:
    """The platform whose environment this is: ``CVDEPLOY_PLATFORM`` first, then the
    variables each platform sets (``AIP_*``: Vertex AI; ``AZUREML_MODEL_DIR``: Azure ML;
    ``SAGEMAKER_*`` / ``SM_*``: SageMaker), else ``None``."""
    named = environ.get("CVDEPLOY_PLATFORM", "").strip().lower()
    if named and named != "none":
        return named
    if any(k.startswith("AIP_") for k in environ):
        return "vertex"
    if "AZUREML_MODEL_DIR" in environ:
        return "azureml"
    if any(k.startswith(("SAGEMAKER_", "SM_")) for k in environ):
        return "sagemaker"
    return None


def resolve_platform(name: str | None, environ: Mapping[str, str]) -> PlatformConfig | None:
    """The contract of ``name`` (``auto``: :func:`detect_platform`) in this environment.

    Raises:
        UsageError: An unknown platform name, or a port variable that is not a number.
    """
    if name is None or name == "none":
        return None
    if name == "auto":
        name = detect_platform(environ)
        if name is None:
            return None
    if name not in PLATFORMS:
        raise UsageError(
            f"unknown platform {name!r}", hint=f"use one of auto, none, {', '.join(PLATFORMS)}"
        )

    def port(var: str, default: int) -> int:
        raw = environ.get(var)
        if not raw:
            return default
        if not raw.isdigit():
            raise UsageError(f"{var}={raw!r} is not a port number")
        return int(raw)

    if name == "sagemaker":
        return PlatformConfig(
            name="sagemaker",
            predict_route="/invocations",
            health_route="/ping",
            port=port("SAGEMAKER_BIND_TO_PORT", 8080),
            model_dir=SAGEMAKER_MODEL_DIR,
        )
    if name == "vertex":
        return PlatformConfig(
            name="vertex",
            predict_route=environ.get("AIP_PREDICT_ROUTE") or "/predict",
            health_route=environ.get("AIP_HEALTH_ROUTE") or "/health",
            port=port("AIP_HTTP_PORT", 8080),
            model_dir=None,
        )
    model_dir = environ.get("AZUREML_MODEL_DIR")
    return PlatformConfig(
        name="azureml",
        predict_route="/score",
        health_route="/",
        port=port("PORT", 8080),
        model_dir=Path(model_dir) if model_dir else None,
    )


def _only_model(st: ServeState) -> str:
    """The one model a platform endpoint serves (a platform deploys one model per endpoint)."""
    names = sorted(st.manager.current)
    if len(names) == 1:
        return names[0]
    if not names:
        raise ApiError(
            503,
            "model_not_ready",
            "the model is not loaded yet",
            headers={"Retry-After": str(st.config.retry_after_s)},
        )
    raise ApiError(
        500,
        "several_models",
        f"a platform endpoint serves one model; this server has {len(names)} ({', '.join(names)})",
    )


def _ready(st: ServeState) -> Response:
    if st.manager.ready and st.manager.current:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False, "errors": st.manager.errors}, status_code=503)


def _thresholds(params: Mapping[str, Any], where: str) -> Thresholds:
    """Thresholds from request parameters (``conf``, ``iou``, ``max_det``), checked."""
    unknown = sorted(set(params) - {"conf", "iou", "max_det"})
    if unknown:
        raise ApiError(400, "invalid_parameter", f"{where}: unknown parameters {unknown}")
    out: dict[str, Any] = {}
    for key, cast, lo, hi in (
        ("conf", float, 0, 1),
        ("iou", float, 0, 1),
        ("max_det", int, 1, 10_000),
    ):
        if params.get(key) is None:
            continue
        try:
            value = cast(params[key])
        except (TypeError, ValueError):
            raise ApiError(400, "invalid_parameter", f"{where}: {key} must be a number") from None
        if not lo <= value <= hi:
            raise ApiError(400, "invalid_parameter", f"{where}: {key} must be in [{lo}, {hi}]")
        out[key] = value
    return Thresholds(**out)


def _custom_attributes(header: str | None) -> dict[str, str]:
    """SageMaker's ``X-Amzn-SageMaker-Custom-Attributes`` as ``key=value`` pairs."""
    if not header:
        return {}
    out = {}
    for item in header.replace(";", ",").split(","):
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _vertex_instances(
    body: bytes, max_images: int
) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    try:
        doc = jsonsafe.loads(body)
    except ValueError as exc:  # not JSON, not UTF-8, or nested too deeply
        raise ApiError(400, "bad_json", f"the JSON body cannot be parsed: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise ApiError(
            400,
            "bad_json",
            'Vertex AI bodies are {"instances": [{"b64": BASE64}, ...], "parameters": {...}}',
        )
    instances = doc["instances"]
    if not instances:
        raise ApiError(400, "no_image", "instances is empty")
    if len(instances) > max_images:
        raise ApiError(
            413, "too_many_images", f"{len(instances)} instances exceed the limit of {max_images}"
        )
    parts = []
    for i, inst in enumerate(instances):
        enc = inst
        if isinstance(inst, dict):
            enc = inst.get("b64")
            if enc is None and isinstance(inst.get("image"), dict):
                enc = inst["image"].get("b64")
            elif enc is None:
                enc = inst.get("image")
        if not isinstance(enc, str):
            raise ApiError(
                400, "bad_base64", f'instances[{i}] must be {{"b64": BASE64}} or a base64 string'
            )
        try:
            parts.append((f"instances[{i}]", base64.b64decode(enc, validate=True)))
        except (binascii.Error, ValueError):
            raise ApiError(400, "bad_base64", f"instances[{i}] is not valid base64") from None
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "bad_json", "parameters must be an object")
    return parts, params


def add_platform_routes(app: FastAPI, platform: PlatformConfig) -> None:
    """Add the routes of a platform's contract (see the module's table)."""

    async def health(request: Request) -> Response:
        return _ready(state_of(request))

    async def predict_like_cvdeploy(request: Request) -> Response:
        """SageMaker ``/invocations`` and Azure ML ``/score``: cvdeploy's bodies and answer."""
        st = state_of(request)
        name = _only_model(st)
        fit = model_input_size(st, name) if st.config.reduced_decode else None
        t0 = time.perf_counter()
        body = await read_body(request, limit=st.config.max_body_bytes)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in _RAW_TYPES:
            parts = [("body", body)]
            if not body:
                raise ApiError(400, "no_image", "the request holds no image")
        else:
            parts = await split_images(request, body, max_images=st.config.max_images)
        attrs = _custom_attributes(request.headers.get("x-amzn-sagemaker-custom-attributes"))
        thresholds = _thresholds(
            {k: v for k, v in attrs.items() if k in ("conf", "iou", "max_det")},
            "custom attributes",
        )
        answer = await run_prediction(st, name, parts, thresholds, t0=t0, fit=fit)
        return JSONResponse(answer.body(), headers=answer.headers())

    async def vertex_predict(request: Request) -> Response:
        st = state_of(request)
        name = _only_model(st)
        fit = model_input_size(st, name) if st.config.reduced_decode else None
        t0 = time.perf_counter()
        body = await read_body(request, limit=st.config.max_body_bytes)
        parts, params = _vertex_instances(body, st.config.max_images)
        answer = await run_prediction(
            st, name, parts, _thresholds(params, "parameters"), t0=t0, fit=fit
        )
        return JSONResponse({"predictions": answer.payload}, headers=answer.headers())

    probe = {"x-probe": True}
    add_route(
        app,
        platform.health_route,
        health,
        methods=["GET"],
        permission=None,
        openapi_extra=probe,
        include_in_schema=False,
    )
    predict = vertex_predict if platform.name == "vertex" else predict_like_cvdeploy
    add_route(
        app,
        platform.predict_route,
        predict,
        methods=["POST"],
        permission="predict",
        include_in_schema=False,
    )
