"""The server's configuration: one frozen pydantic model, read from flags and/or YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cvdeploy.errors import InputError, UsageError
from cvdeploy.security import SecurityConfig, TLSConfig

__all__ = ["PLATFORMS", "DriftConfig", "PlatformConfig", "ServeConfig", "load_config"]

PLATFORMS = ("sagemaker", "vertex", "azureml")
"""Cloud platforms whose container contract the server can answer (see
:mod:`cvdeploy.serve.platforms`)."""


class PlatformConfig(BaseModel):
    """A cloud platform's container contract: its routes, port and model directory.

    Built from the environment the platform sets by
    :func:`cvdeploy.serve.platforms.resolve_platform`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["sagemaker", "vertex", "azureml"]
    predict_route: str = Field(pattern=r"^/")
    health_route: str = Field(pattern=r"^/")
    port: int = Field(ge=1, le=65535)
    model_dir: Path | None = None
    """Where the platform puts the model (SageMaker ``/opt/ml/model``, ``AZUREML_MODEL_DIR``)."""


class DriftConfig(BaseModel):
    """The rolling drift check (see :mod:`cvdeploy.serve.drift`).

    Attributes:
        enabled: Monitor models whose bundle holds a drift reference (``cvdeploy eval``
            records one); bundles without one are not monitored.
        sample_rate: Fraction of predicted images summarised into the window.
        window: Images in the rolling window (the newest).
        min_window: Images needed before the first test.
        every: New samples between two tests.
        alert_p_value: The window's p-value at or below which the alert is on; it is the
            family-wise false-alarm rate of each test when nothing drifted.
        permutations: Permutations of the MMD and class-mix tests.
        queue: Sampled images waiting for the drift worker; when it is full, new samples
            are dropped (and counted: ``cvdeploy_drift_dropped_samples``), never waited for.
        check_process: Run the window tests in a separate low-priority process (off the
            server's GIL and at nice +10); ``false``: in the drift worker thread.
        min_interval_s: Least time between two tests of a model's window (spaces the tests
            out under heavy traffic; a due test runs once the time has passed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    sample_rate: float = Field(0.05, ge=0, le=1)
    window: int = Field(200, ge=10, le=5000)
    min_window: int = Field(50, ge=10)
    every: int = Field(25, ge=1)
    alert_p_value: float = Field(0.01, gt=0, lt=1)
    permutations: int = Field(200, ge=50, le=5000)
    queue: int = Field(64, ge=1, le=10000)
    min_interval_s: float = Field(10.0, ge=0, le=86400)
    check_process: bool = True

    def model_post_init(self, __context: Any) -> None:
        """Check option combinations."""
        if self.min_window > self.window:
            raise ValueError("drift.min_window must not exceed drift.window")


class ServeConfig(BaseModel):
    """Everything :func:`cvdeploy.serve.app.create_app` needs.

    Attributes:
        source: A bundle directory or a model registry directory (see
            :mod:`cvdeploy.serve.registry`).
        artifact: Artifact id to serve, or ``auto`` (the bundle's recommended one).
        max_batch: Most images grouped into one inference call.
        max_wait_ms: Longest time the first queued image waits for others to join its batch.
        queue_size: Most images waiting per model; beyond it requests get 503.
        workers: Inference worker threads per model, each with its own runner (``None``:
            one single-threaded runner per core, up to 4; see
            :func:`cvdeploy.serve.models.auto_workers`).
        threads: Intra-op threads per runner (``None``: the runtime's default).
        request_timeout_s: Deadline of a request, from arrival to answer (504 past it).
        max_body_bytes: Largest accepted request body (413 beyond).
        max_pixels: Largest accepted image, width x height, read from the header (413 beyond).
        max_images: Most images in one request.
        max_request_pixels: Most pixels (sum of width x height of its images, read from
            the headers) in one request (413 beyond).
        decode_budget_pixels: Most pixels decoded and held at once by all requests together
            (about 3 bytes each); a request waits for its share, until its deadline (503).
        max_json_bytes: Largest body of the routes other than predict (log-in, admin).
        reduced_decode: Decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) when
            the smaller image still covers the model input (see
            :func:`cvdeploy.serve.inputs.jpeg_reduction`); boxes are answered in the sent
            image's coordinates either way. ``False`` decodes every image in full, as
            ``cvdeploy predict`` does, for outputs identical to it.
        warmup_runs: Inference calls at full batch before the model counts as ready.
        poll_interval_s: How often the registry state file is checked for promotions.
        sample_rate: Fraction of requests whose inputs and outputs are logged (0 disables).
        log_dir: Where sampled requests go (required when ``sample_rate`` > 0).
        log_max_bytes: Size cap of the request log; the oldest entries are rotated out.
        retry_after_s: ``Retry-After`` seconds sent with a 503.
        model_key_file: Key file of encrypted artifacts (decrypted in memory only).
        model_key_env: Environment variable holding that key instead (e.g. set from a KMS).
        trusted_public_key: Ed25519 public key (PEM); when set, only bundles it signed load,
            and a version that fails the check leaves the current one serving.
        tls: HTTPS certificate, key and optional client CA (``None``: plain HTTP).
        security: Authentication, RBAC, audit log and abuse limits (``None``: every
            route is open, as for a server on a trusted loopback).
        platform: Also answer a cloud platform's container contract (SageMaker, Vertex AI,
            Azure ML) beside the cvdeploy routes (``None``: only the cvdeploy routes).
        drift: The rolling drift check over sampled requests (alert threshold, window).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Path
    artifact: str = "auto"
    max_batch: int = Field(8, ge=1, le=256)
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)
    queue_size: int = Field(256, ge=1)
    workers: int | None = Field(None, ge=1, le=64)
    threads: int | None = Field(None, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1)
    max_images: int = Field(32, ge=1)
    max_request_pixels: int = Field(100_000_000, ge=1)
    decode_budget_pixels: int = Field(200_000_000, ge=1)
    max_json_bytes: int = Field(64 * 1024, ge=1024)
    reduced_decode: bool = True
    warmup_runs: int = Field(2, ge=0)
    poll_interval_s: float = Field(1.0, gt=0)
    sample_rate: float = Field(0.0, ge=0, le=1)
    log_dir: Path | None = None
    log_max_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    retry_after_s: int = Field(1, ge=1)
    model_key_file: Path | None = None
    model_key_env: str | None = None
    trusted_public_key: Path | None = None
    tls: TLSConfig | None = None
    security: SecurityConfig | None = None
    platform: PlatformConfig | None = None
    drift: DriftConfig = Field(default_factory=DriftConfig)

    def model_post_init(self, __context: Any) -> None:
        """Check option combinations."""
        if self.sample_rate > 0 and self.log_dir is None:
            raise ValueError("sample_rate > 0 needs log_dir (where sampled requests are stored)")


def load_config(path: Path | None = None, **overrides: Any) -> ServeConfig:
    """Build a :class:`ServeConfig` from a YAML file plus overrides (flags win).

    Args:
        path: A YAML file with :class:`ServeConfig` keys, or ``None``.
        **overrides: Values that replace the file's (``None`` values are ignored; a dict
            is merged into the file's dict for that key, e.g. ``security``).

    Raises:
        InputError: The file is missing or not valid YAML.
        UsageError: A key is unknown or a value is out of range.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(
                f"serve config {p} does not exist", hint="check the --config path"
            ) from None
        except OSError as exc:  # a directory, no permission: said, not a traceback
            raise InputError(
                f"serve config {p} cannot be read: {exc.strerror or exc}",
                hint="check the --config path and that this user may read it",
            ) from None
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"serve config {p} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InputError(f"serve config {p} must be a mapping of option: value")
        data.update(loaded)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **{kk: vv for kk, vv in v.items() if vv is not None}}
        elif v is not None:
            data[k] = v
    try:
        return ServeConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(
            f"invalid serve configuration: {problems}",
            hint="see `cvdeploy serve --help` for the options and their ranges",
        ) from None
