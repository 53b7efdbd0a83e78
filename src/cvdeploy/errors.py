"""One error hierarchy for cvdeploy.

Every error carries a message that says what went wrong *and what to do*, and, as class
attributes, how each front end answers it:

- ``exit_code``: the CLI's exit status (1 a check ran and failed, 2 bad usage or input),
  mapped in one place (``cvdeploy.cli.common.handle_errors``);
- ``http_status``, ``code`` (a short machine-readable name) and ``headers``: the server's
  JSON error answer, built in one place (the ``CvdeployError`` handler of
  ``cvdeploy.serve.app``).

As with Starlette's exception handlers, the most specific class wins: the attributes are
looked up through the class's MRO, so a subclass that sets none answers like its parent.
An instance may override them (keyword arguments of :class:`CvdeployError`), which is how
:class:`ApiError` carries the status of each HTTP refusal.

=====================  ====  ====  ===================  =================================
class                  exit  HTTP  code                 notes
=====================  ====  ====  ===================  =================================
CvdeployError          2     500   server_error         anything not named below
UsageError             2     400   bad_request
InputError             2     400   bad_input            DatasetError too
ImageDecodeError       2     400   bad_image
ShapeError             2     400   bad_shape
SpecError              2     400   bad_spec
BundleError            2     500   server_error         the server's own files (Integrity)
ModelLoadError         2     500   server_error         the server's own model files
BackendUnavailable     2     500   server_error
CheckFailed            1     500   server_error
Interrupted            130   500   server_error         Ctrl-C, state saved for --resume
TokenError             2     401   unauthorized         ``WWW-Authenticate: Bearer``
ServerBusy             2     503   overloaded           ``Retry-After`` (Overloaded, Draining)
DeadlineExceeded       2     504   deadline_exceeded
AuditUnavailable       2     503   audit_unavailable    the audit log cannot be written
StorageError           2     500   storage_error        a file cannot be written (disk full)
ApiError               2     (given per instance)
=====================  ====  ====  ===================  =================================
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "ApiError",
    "AuditUnavailable",
    "BackendUnavailable",
    "BundleError",
    "CheckFailed",
    "CvdeployError",
    "DatasetError",
    "DeadlineExceeded",
    "Draining",
    "ImageDecodeError",
    "InputError",
    "IntegrityError",
    "Interrupted",
    "LabelError",
    "ModelLoadError",
    "Overloaded",
    "ServerBusy",
    "ShapeError",
    "SpecError",
    "StorageError",
    "TokenError",
    "UsageError",
]


class CvdeployError(Exception):
    """Base class of every error cvdeploy raises on purpose.

    Args:
        message: What went wrong.
        hint: What the user should do about it (printed after the message).
        http_status: Overrides the class's HTTP status for this error.
        code: Overrides the class's machine-readable code for this error.
        headers: HTTP response headers for this error (added to the class's).

    Attributes:
        exit_code: CLI exit status: 1 a check ran and failed, 2 bad usage or input.
        http_status: HTTP status the server answers with.
        code: Short machine-readable code of the HTTP error body.
        headers: HTTP response headers of the answer (e.g. ``WWW-Authenticate``).
        retry_after: The server adds its configured ``Retry-After`` delay to the answer
            (unless ``headers`` already has one).
        hint_is_public: The hint is part of the HTTP answer; ``False`` where it advises the
            operator of the server rather than its client.
    """

    exit_code: int = 2
    http_status: int = 500
    code: str = "server_error"
    headers: Mapping[str, str] = MappingProxyType({})
    retry_after: bool = False
    hint_is_public: bool = True

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        http_status: int | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if http_status is not None:
            self.http_status = http_status
        if code is not None:
            self.code = code
        self.headers = {**type(self).headers, **(headers or {})}

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message

    @property
    def public_message(self) -> str:
        """The message of the HTTP answer: with the hint, unless that is for the operator."""
        return str(self) if self.hint_is_public else self.message


class UsageError(CvdeployError):
    """Bad options or a combination of options that cannot work."""

    http_status = 400
    code = "bad_request"


class InputError(CvdeployError):
    """A file, image, dataset or model given by the user is missing or malformed."""

    http_status = 400
    code = "bad_input"


class ImageDecodeError(InputError):
    """An image file (or bytes) could not be decoded."""

    code = "bad_image"


class DatasetError(InputError):
    """A dataset is empty, malformed or inconsistent with the model."""


class LabelError(DatasetError):
    """A label file is malformed or names a class the model does not have."""


class ModelLoadError(InputError):
    """A model file is missing, corrupted or cannot be loaded by its runtime.

    Over HTTP the model is the server's own, so it answers 500 like any server fault.
    """

    http_status = 500
    code = "server_error"


class SpecError(InputError):
    """The model spec is incomplete, inconsistent, or does not match an artifact."""

    code = "bad_spec"


class BundleError(InputError):
    """A bundle is missing, malformed, or its files do not match the manifest.

    Over HTTP the bundle is the server's own, so it answers 500 like any server fault.
    """

    http_status = 500
    code = "server_error"


class IntegrityError(BundleError):
    """A bundle file's checksum does not match the manifest (the file was altered)."""


class BackendUnavailable(CvdeployError):
    """A runtime backend or exporter cannot run here (package or hardware missing)."""


class ShapeError(InputError):
    """An input tensor does not match what the artifact accepts."""

    code = "bad_shape"


class CheckFailed(CvdeployError):
    """A verification ran and failed (parity gate, accuracy budget, ...)."""

    exit_code = 1


class Interrupted(CvdeployError):
    """Long work (training) was interrupted and its state saved: rerun with ``--resume``."""

    exit_code = 130


# serving ------------------------------------------------------------------------------------
class ApiError(CvdeployError):
    """An HTTP refusal with its own status, answered as ``{"error": {"code", "message"}}``.

    Args:
        status: HTTP status code.
        code: A short machine-readable code.
        message: What went wrong and what to do.
        headers: Extra response headers (e.g. ``Retry-After``).
    """

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, http_status=status, code=code, headers=headers)

    @property
    def status(self) -> int:
        """The HTTP status (``http_status``)."""
        return self.http_status


class TokenError(CvdeployError):
    """An access token was refused (the message is safe to return to the client)."""

    http_status = 401
    code = "unauthorized"
    headers = MappingProxyType({"WWW-Authenticate": "Bearer"})


class ServerBusy(CvdeployError):
    """The server cannot take the work now; the client should retry (HTTP 503).

    The answer carries the server's ``Retry-After`` delay; the hint (about workers and
    queue sizes) is for the operator and stays out of it.
    """

    http_status = 503
    code = "overloaded"
    retry_after = True
    hint_is_public = False


class Overloaded(ServerBusy):
    """The queue is full: the client should retry later (HTTP 503)."""


class Draining(ServerBusy):
    """The model version is being retired and accepts no new work (HTTP 503)."""


class DeadlineExceeded(CvdeployError):
    """The request's deadline passed before it was answered (HTTP 504)."""

    http_status = 504
    code = "deadline_exceeded"


class AuditUnavailable(ServerBusy):
    """The audit log cannot be written (disk full, I/O error): nothing is acknowledged
    unrecorded, so the request is refused (HTTP 503) and the log is left as it was."""

    code = "audit_unavailable"


class StorageError(CvdeployError):
    """A file could not be written: the disk is full, read-only, or not writable by us.

    Raised instead of the bare ``OSError`` where cvdeploy writes its own files (bundles),
    after undoing the partial write: nothing is left half-written.
    """

    code = "storage_error"
