"""The error hierarchy: one base, exit codes and HTTP answers looked up through the MRO."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import cvdeploy
from cvdeploy import errors
from cvdeploy.errors import (
    ApiError,
    CheckFailed,
    CvdeployError,
    DeadlineExceeded,
    Draining,
    ImageDecodeError,
    InputError,
    IntegrityError,
    ModelLoadError,
    Overloaded,
    ShapeError,
    SpecError,
    TokenError,
    UsageError,
)

SRC = Path(cvdeploy.__file__).parent


@pytest.mark.parametrize(
    ("cls", "exit_code", "status", "code"),
    [
        (CvdeployError, 2, 500, "server_error"),
        (UsageError, 2, 400, "bad_request"),
        (InputError, 2, 400, "bad_input"),
        (ImageDecodeError, 2, 400, "bad_image"),
        (ShapeError, 2, 400, "bad_shape"),
        (SpecError, 2, 400, "bad_spec"),
        (ModelLoadError, 2, 500, "server_error"),
        (IntegrityError, 2, 500, "server_error"),
        (CheckFailed, 1, 500, "server_error"),
        (TokenError, 2, 401, "unauthorized"),
        (Overloaded, 2, 503, "overloaded"),
        (Draining, 2, 503, "overloaded"),
        (DeadlineExceeded, 2, 504, "deadline_exceeded"),
    ],
)
def test_each_class_carries_its_exit_code_and_http_answer(
    cls: type[CvdeployError], exit_code: int, status: int, code: str
) -> None:
    exc = cls("it broke")
    assert (exc.exit_code, exc.http_status, exc.code) == (exit_code, status, code)
    assert exc.public_message == "it broke"


def test_the_most_specific_class_wins_and_an_instance_may_override() -> None:
    class Tall(ShapeError):
        pass

    assert Tall("x").http_status == 400 and Tall("x").code == "bad_shape"  # from ShapeError
    exc = ShapeError("x", http_status=422, code="too_tall", headers={"X-A": "1"})
    assert (exc.http_status, exc.code, exc.headers) == (422, "too_tall", {"X-A": "1"})
    assert ShapeError("y").http_status == 400 and ShapeError("y").headers == {}  # class unchanged


def test_headers_retry_and_hints() -> None:
    token = TokenError("token expired", headers={"X-B": "2"})
    assert token.headers == {"WWW-Authenticate": "Bearer", "X-B": "2"}
    assert TokenError("again").headers == {"WWW-Authenticate": "Bearer"}
    assert Overloaded("full").retry_after and Draining("bye").retry_after
    assert not DeadlineExceeded("late").retry_after
    busy = Overloaded("full", hint="add workers")
    assert busy.public_message == "full"  # the hint is for the operator
    usage = UsageError("bad option", hint="use --x")
    assert usage.public_message == str(usage) == "bad option\n  hint: use --x"


def test_api_error_keeps_its_signature_and_status() -> None:
    exc = ApiError(429, "rate_limited", "slow down", headers={"Retry-After": "3"})
    assert isinstance(exc, CvdeployError)
    assert (exc.status, exc.http_status, exc.code, exc.message) == (
        429,
        429,
        "rate_limited",
        "slow down",
    )
    assert exc.headers == {"Retry-After": "3"} and exc.exit_code == 2


def test_old_import_paths_still_name_the_same_classes() -> None:
    from cvdeploy.security.auth import TokenError as AuthTokenError
    from cvdeploy.serve.inputs import ApiError as InputsApiError

    assert AuthTokenError is TokenError and InputsApiError is ApiError


def test_every_error_class_is_in_errors_py_and_derives_from_the_base() -> None:
    for name, obj in vars(errors).items():
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert issubclass(obj, CvdeployError), name
    elsewhere = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "errors.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and (b.id.endswith(("Error", "Exception")) or b.id in _ERRS)
                for b in node.bases
            ):
                elsewhere.append(f"{path.relative_to(SRC)}:{node.name}")
    assert elsewhere == [], "error classes belong in cvdeploy/errors.py"


_ERRS = frozenset(
    n for n, o in vars(errors).items() if inspect.isclass(o) and issubclass(o, BaseException)
)
