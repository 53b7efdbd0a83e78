"""Per-operator inference times from the runtime's own profiler.

* ONNX Runtime: the session profiler (``RunnerOptions(extra={"profile_dir": ...})``) writes a
  Chrome-trace JSON; the ``Node`` events (``*_kernel_time``) of every run but the first are
  summed per operator type and per node.
* OpenVINO: performance counters (``RunnerOptions(extra={"PERF_COUNT": True})``) read after
  every inference but the first, summed the same way.

Profiling runs in its own pass on its own runner, after the timed benchmark, because the
profiler slows inference down; only the inference stage is profiled (pre- and
post-processing are timed per stage by the harness). Shares are of the operator total (the
sum of node times), which leaves out the runtime's own overhead between nodes.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.bundle import Bundle
from cvdeploy.data.io import read_image
from cvdeploy.errors import BackendUnavailable, UsageError
from cvdeploy.pipeline.predictor import Predictor
from cvdeploy.runtime import RunnerOptions

PROFILED_FORMATS = ("onnx", "openvino")


@dataclass(frozen=True, slots=True)
class OpTime:
    """Time spent in one operator type or node, per inference."""

    name: str
    op_type: str
    ms: float
    share: float
    calls: int


@dataclass(slots=True)
class OpProfile:
    """Per-operator profile of one artifact's inference."""

    source: str
    runs: int
    total_ms: float
    by_type: list[OpTime]
    top_nodes: list[OpTime]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "source": self.source,
            "runs": self.runs,
            "total_ms": self.total_ms,
            "by_type": [_op_dict(o) for o in self.by_type],
            "top_nodes": [_op_dict(o) for o in self.top_nodes],
            "notes": list(self.notes),
        }


def _op_dict(o: OpTime) -> dict[str, Any]:
    return {"name": o.name, "op_type": o.op_type, "ms": o.ms, "share": o.share, "calls": o.calls}


def summarize_ops(
    samples: Sequence[tuple[str, str, float]], *, runs: int, top: int = 15
) -> tuple[float, list[OpTime], list[OpTime]]:
    """Aggregate ``(node name, op type, microseconds)`` samples over ``runs`` inferences.

    Returns:
        Total milliseconds per inference, operator types by time, and the ``top`` nodes.
    """
    by_type: dict[str, list[float]] = defaultdict(list)
    by_node: dict[tuple[str, str], list[float]] = defaultdict(list)
    for name, op_type, us in samples:
        by_type[op_type].append(us)
        by_node[(name, op_type)].append(us)
    runs = max(runs, 1)
    total_us = sum(us for _, _, us in samples)
    total_ms = total_us / 1e3 / runs

    def share(us: float) -> float:
        return us / total_us if total_us > 0 else 0.0

    types = sorted(
        (
            OpTime(
                name=t,
                op_type=t,
                ms=sum(v) / 1e3 / runs,
                share=share(sum(v)),
                calls=len(v) // runs,
            )
            for t, v in by_type.items()
        ),
        key=lambda o: -o.ms,
    )
    nodes = sorted(
        (
            OpTime(
                name=n,
                op_type=t,
                ms=sum(v) / 1e3 / runs,
                share=share(sum(v)),
                calls=len(v) // runs,
            )
            for (n, t), v in by_node.items()
        ),
        key=lambda o: -o.ms,
    )
    return total_ms, types[:top], nodes[:top]


def parse_ort_trace(path: Path) -> tuple[list[tuple[str, str, float]], int]:
    """Node samples of an ONNX Runtime profile, without the first run; and the run count.

    Args:
        path: The JSON trace written by ``InferenceSession.end_profiling()``.

    Returns:
        ``(node, op type, microseconds)`` samples and the number of runs they cover.
    """
    events = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(events, dict):  # some versions wrap the list
        events = events.get("traceEvents", [])
    runs = sorted(
        (e["ts"], e["ts"] + e.get("dur", 0))
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    skip_until = runs[0][1] if len(runs) > 1 else -1
    samples: list[tuple[str, str, float]] = []
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if e.get("ts", 0) <= skip_until:
            continue
        name = str(e["name"])[: -len("_kernel_time")]
        op_type = str(e.get("args", {}).get("op_name", "?"))
        samples.append((name, op_type, float(e.get("dur", 0))))
    return samples, max(len(runs) - 1, 1) if len(runs) > 1 else len(runs)


def _inputs(pred: Predictor, paths: Sequence[Path], batch: int) -> np.ndarray:
    chunk = [paths[j % len(paths)] for j in range(batch)]
    x, _ = pred.preprocess([read_image(p) for p in chunk])
    return x


def profile_artifact(
    bundle: Bundle,
    artifact_id: str,
    images: Sequence[Path],
    *,
    batch: int = 1,
    imgsz: tuple[int, int] | None = None,
    options: RunnerOptions | None = None,
    runs: int = 20,
    top: int = 15,
) -> OpProfile:
    """Profile an artifact's inference per operator with its runtime's profiler.

    Args:
        bundle: The bundle.
        artifact_id: The artifact.
        images: Real images (the first ``batch`` are used).
        batch: Images per inference.
        imgsz: Input size (dynamic-size artifacts).
        options: Runner options (threads...); the profiling option is added to them.
        runs: Profiled inferences (one more runs first and is left out).
        top: How many operator types and nodes to keep.

    Returns:
        The profile.

    Raises:
        BackendUnavailable: The artifact's format has no profiler support in cvdeploy.
    """
    if not images:
        raise UsageError("no images to profile with", hint="pass --images DIR")
    if runs < 1:
        raise UsageError(f"profile runs must be >= 1, got {runs}")
    art = bundle.artifact(artifact_id)
    if art.format not in PROFILED_FORMATS:
        raise BackendUnavailable(
            f"per-operator profiling is not available for format {art.format!r} "
            f"(supported: {', '.join(PROFILED_FORMATS)})",
            hint="profile the onnx or openvino artifact instead",
        )
    base = options or RunnerOptions()
    with tempfile.TemporaryDirectory(prefix="cvdeploy-profile-") as tmp:
        if art.format == "onnx":
            extra: dict[str, Any] = {**base.extra, "profile_dir": tmp}
        else:
            extra = {**base.extra, "PERF_COUNT": True}
        opts = RunnerOptions(threads=base.threads, device=base.device, extra=extra)
        pred = Predictor.from_bundle(bundle, art.id, options=opts, imgsz=imgsz, batch=batch)
        with pred:
            x = _inputs(pred, images, batch)
            runner: Any = pred.runner
            if art.format == "onnx":
                for _ in range(runs + 1):
                    pred.infer(x)
                trace = runner.end_profiling()
                samples, n = parse_ort_trace(Path(trace))
                source = "onnxruntime profiler"
            else:
                pred.infer(x)
                samples = []
                for _ in range(runs):
                    pred.infer(x)
                    samples.extend(
                        (p["name"], p["type"], float(p["real_time_us"]))
                        for p in runner.perf_counts()
                        if p["real_time_us"] > 0
                    )
                n = runs
                source = "openvino performance counters"
    total, types, nodes = summarize_ops(samples, runs=n, top=top)
    notes = []
    if not samples:
        notes.append(f"{source} returned no operator times for {art.id}")
    return OpProfile(
        source=source, runs=n, total_ms=total, by_type=types, top_nodes=nodes, notes=notes
    )
