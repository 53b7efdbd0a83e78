"""One error hierarchy for cvdeploy.

Every error carries a message that says what went wrong *and what to do*. The CLI maps
them to exit codes: :class:`CheckFailed` -> 1 (a verification ran and failed), every
other :class:`CvdeployError` -> 2 (bad usage or bad input).
"""

from __future__ import annotations


class CvdeployError(Exception):
    """Base class of every error cvdeploy raises on purpose.

    Args:
        message: What went wrong.
        hint: What the user should do about it (printed after the message).
    """

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(CvdeployError):
    """Bad options or a combination of options that cannot work."""


class InputError(CvdeployError):
    """A file, image, dataset or model given by the user is missing or malformed."""


class ImageDecodeError(InputError):
    """An image file (or bytes) could not be decoded."""


class DatasetError(InputError):
    """A dataset is empty, malformed or inconsistent with the model."""


class ModelLoadError(InputError):
    """A model file is missing, corrupted or cannot be loaded by its runtime."""


class SpecError(InputError):
    """The model spec is incomplete, inconsistent, or does not match an artifact."""


class BundleError(InputError):
    """A bundle is missing, malformed, or its files do not match the manifest."""


class IntegrityError(BundleError):
    """A bundle file's checksum does not match the manifest (the file was altered)."""


class BackendUnavailable(CvdeployError):
    """A runtime backend or exporter cannot run here (package or hardware missing)."""


class ShapeError(InputError):
    """An input tensor does not match what the artifact accepts."""


class CheckFailed(CvdeployError):
    """A verification ran and failed (parity gate, accuracy budget, ...)."""

    exit_code = 1
