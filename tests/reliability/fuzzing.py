"""The API fuzzer shared by the bounded CI tests, ``make fuzz`` and the reliability figures.

schemathesis generates requests from the server's own OpenAPI schema (positive and
negative data, every operation, model names both real and random) and sends them in
process through a running app's ASGI test client; each answer is checked for server errors
(5xx), undocumented status codes and undocumented content types (schemathesis' checks
``not_a_server_error``, ``status_code_conformance``, ``content_type_conformance``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_SKIP = ("timeout", "allow_redirects", "verify", "cert", "stream")


@dataclass
class FuzzReport:
    """What one fuzzing run sent and got back."""

    requests: int = 0
    unsendable: int = 0
    by_status: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        """Answers with a 5xx status other than 503 (load shedding is not a fault)."""
        return sum(n for s, n in self.by_status.items() if s >= 500 and s != 503)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly."""
        return {
            "requests": self.requests,
            "unsendable": self.unsendable,
            "server_errors": self.server_errors,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "check_failures": len(self.failures),
            "first_failures": self.failures[:5],
        }


def fuzz(
    client: Any,
    schema_dict: Mapping[str, Any],
    *,
    examples: int,
    headers: Mapping[str, str] | None = None,
    model: str = "tiny",
    seed: int = 0,
    on_request: Callable[[int], None] | None = None,
) -> FuzzReport:
    """Fuzz every operation of ``schema_dict`` through ``client`` (a started TestClient).

    Args:
        client: The app's test client (its lifespan running, models ready).
        schema_dict: The app's OpenAPI document.
        examples: Hypothesis examples per operation and generation mode (positive data
            with the served model's name, positive data with any name, negative data).
        headers: Sent with every request (credentials for a secured server).
        model: The served model's name, used for half the path parameters.
        seed: Hypothesis seed (runs are reproducible).
        on_request: Called with the running request count (progress).

    Returns:
        The counts by status, and every check that failed (at most 50 kept).
    """
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance]
    report = FuzzReport()
    schema = schemathesis.openapi.from_dict(dict(schema_dict))
    for result in schema.get_all_operations():
        op = result.ok()
        named = {"name": model} if "{name}" in op.path else None
        strategies = [
            op.as_strategy(GenerationMode.POSITIVE, path_parameters=named),
            op.as_strategy(GenerationMode.POSITIVE),
            op.as_strategy(GenerationMode.NEGATIVE),
        ]

        @hseed(seed)
        @given(case=st.one_of(strategies))
        @settings(
            max_examples=examples * len(strategies),
            deadline=None,
            database=None,
            derandomize=False,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            kw = case.as_transport_kwargs(base_url="http://testserver")
            kw = {k: v for k, v in kw.items() if k not in _SKIP}
            kw["headers"] = {**(kw.get("headers") or {}), **(headers or {})}
            try:
                request = client.build_request(**kw)
                request.read()  # rendered before sending: a body httpx cannot build is skipped
            except Exception:
                report.unsendable += 1
                return
            r = client.send(request)
            report.requests += 1
            report.by_status[r.status_code] += 1
            if on_request is not None:
                on_request(report.requests)
            if r.status_code >= 500 and r.status_code != 503:
                _keep(report, case.operation.label, r.status_code, f"server error: {r.text[:200]}")
            try:
                case.validate_response(r, checks=checks, headers=kw["headers"])
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis groups failures
                _keep(
                    report,
                    case.operation.label,
                    r.status_code,
                    str(exc).strip().splitlines()[0][:300],
                )

        run()
    return report


def _keep(report: FuzzReport, label: str, status: int, message: str) -> None:
    if len(report.failures) < 50:
        report.failures.append({"operation": label, "status": status, "problem": message})


def fuzz_stateful(
    client: Any,
    schema_dict: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    examples: int = 20,
    steps: int = 8,
) -> FuzzReport:
    """Follow the schema's OpenAPI links (create a key, then revoke it by the id answered)
    in sequences of up to ``steps`` calls; the same checks as :func:`fuzz`."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, reject, settings
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        status_code_conformance,
    )
    from schemathesis.core.transport import Response

    checks = [not_a_server_error, status_code_conformance, content_type_conformance]
    report = FuzzReport()
    machine = schemathesis.openapi.from_dict(dict(schema_dict)).as_state_machine()

    class Machine(machine):  # type: ignore[misc, valid-type]
        def call(self, case: Any, **kwargs: Any) -> Any:
            kw = case.as_transport_kwargs(base_url="http://testserver")
            kw = {k: v for k, v in kw.items() if k not in _SKIP}
            kw["headers"] = {**(kw.get("headers") or {}), **(headers or {})}
            try:
                request = client.build_request(**kw)
                request.read()  # a body httpx cannot build is not a request: step rejected
            except Exception:
                report.unsendable += 1
                reject()
            r = client.send(request)
            report.requests += 1
            report.by_status[r.status_code] += 1
            return Response.from_any(r)

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=checks, headers=dict(headers or {}))
            except (Exception, BaseExceptionGroup) as exc:
                _keep(report, case.operation.label, response.status_code, str(exc)[:300])

    Machine.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    Machine.TestCase().runTest()
    return report
