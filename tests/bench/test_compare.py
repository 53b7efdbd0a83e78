"""Side-by-side latency: alternating rounds, medians kept (no timing in tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

import cvdeploy.bench.compare as compare_mod


def test_side_by_side_alternates_and_takes_medians(monkeypatch: pytest.MonkeyPatch) -> None:
    """A B, B A, A B; each artifact's figures are the medians of its rounds (no timing)."""
    calls: list[str] = []
    fake = {"a": iter([10.0, 30.0, 20.0]), "b": iter([5.0, 100.0, 6.0])}

    def measure(bundle: object, aid: str, images: object, **kw: object) -> compare_mod.Latency:
        calls.append(aid)
        v = next(fake[aid])
        return compare_mod.Latency(
            artifact=aid, p50_ms=v, inference_p50_ms=v / 2, pre_post_p50_ms=1.0, images=1, warmup=0
        )

    monkeypatch.setattr(compare_mod, "measure_latency", measure)
    out = compare_mod.measure_side_by_side(
        object(),  # type: ignore[arg-type]
        {"fp32": "a", "int8": "b"},
        [Path("x.jpg")],
        rounds=3,
    )
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert out["fp32"].p50_ms == 20.0 and out["int8"].p50_ms == 6.0
    assert out["int8"].inference_p50_ms == 3.0 and out["int8"].rounds == 3
