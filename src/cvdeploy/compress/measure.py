"""Judge a compressed model by its exported artifact: bundle it, gate it, time it, score it.

Every candidate becomes a normal bundle (a torch artifact, then ONNX and, for OpenVINO,
an IR, each through the export stage's parity gate against the torch model), so what is
timed and scored is what would be deployed. Latency is the bench harness's end-to-end p50
(image decode, preprocessing, inference, decoding + NMS, batch 1), measured in alternating
rounds with the reference model (A B, B A, A B; medians), never one after the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvdeploy.bench import Latency, measure_latency
from cvdeploy.bundle import Bundle, Provenance
from cvdeploy.environment import fingerprint
from cvdeploy.errors import CheckFailed
from cvdeploy.export import ExportOptions, export_model
from cvdeploy.runtime.torch import save_checkpoint
from cvdeploy.spec import IOSpec, ModelSpec, TensorSpec
from cvdeploy.verify import Protocol, evaluate_bundle

__all__ = [
    "RUNTIME_FORMATS",
    "ModelRow",
    "accuracy",
    "artifact_for",
    "export_candidate",
    "interleaved_latency",
    "write_torch_bundle",
]

RUNTIME_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino"}
"""The runtimes a compressed model is judged on, and the format each runs."""


@dataclass
class ModelRow:
    """One row of the result table.

    Attributes:
        name: ``source``, ``step 1``, ``pruned``, ``pruned + INT8``, ``student``...
        artifact: The artifact timed and scored.
        params: Parameters (``None`` for an artifact without a torch model).
        macs: Multiply-accumulates of one image at the input size.
        size_mb: File size of the artifact.
        metric: ``map50_95`` (detection) or ``top1`` (classification) on the eval data.
        value: That metric (``None`` without eval data).
        p50_ms: End-to-end p50 on the chosen runtime (batch 1).
        inference_p50_ms: The inference stage's p50.
        speedup: The source's p50 / this row's p50.
        ratio: Channels removed so far (pruning).
        note: What to know about the row (e.g. "not faster than the source").
    """

    name: str
    artifact: str
    params: int | None = None
    macs: int | None = None
    size_mb: float | None = None
    metric: str = "map50_95"
    value: float | None = None
    p50_ms: float | None = None
    inference_p50_ms: float | None = None
    speedup: float | None = None
    ratio: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _io(spec: ModelSpec) -> IOSpec:
    c = spec.preprocess.channels
    out = (
        TensorSpec(name="output0", shape=(-1, spec.num_classes))
        if spec.task == "classify"
        else TensorSpec(name="output0", shape=(-1, 4 + spec.num_classes, -1))
    )
    return IOSpec(inputs=(TensorSpec(name="images", shape=(-1, c, -1, -1)),), outputs=(out,))


def write_torch_bundle(
    module: torch.nn.Module,
    *,
    out: Path,
    name: str,
    spec: ModelSpec,
    builder: str,
    samples: Sequence[Path],
    tool: str,
    options: dict[str, Any],
    pruned: bool,
    details: dict[str, Any] | None = None,
    builder_data: dict[str, Any] | None = None,
) -> Bundle:
    """Create a bundle holding ``module`` as its torch source artifact.

    Args:
        module: The model (its weights are saved, not its code).
        out: The bundle directory (replaced when it exists).
        name: Bundle name.
        spec: The model's spec.
        builder: How the architecture is rebuilt (``zoo:NAME``, ``pruned:zoo:NAME``...).
        samples: Sample images kept in the bundle (the gate's default images).
        tool: Provenance tool (``prune``, ``distill``).
        options: Provenance options.
        pruned: The layers are narrower than the builder makes them (shapes from weights).
        details: History details.
        builder_data: What the builder needs besides its name (an ``onnx:`` builder's graph
            and spec), stored in the checkpoint.
    """
    with Bundle.create(
        out, name=name, spec=spec, overwrite=True, action=tool, details=details or {}
    ) as edit:
        d = edit.artifact_dir("torch-fp32")
        save_checkpoint(
            d / "model.pt",
            builder=builder,
            num_classes=spec.num_classes,
            state_dict=module.state_dict(),
            shapes_from_weights=pruned,
            builder_data=builder_data,
        )
        edit.add_artifact(
            artifact_id="torch-fp32",
            format="torch",
            precision="fp32",
            io=_io(spec),
            main_file="model.pt",
            produced_by=Provenance(tool=tool, options=options),
            environment=fingerprint(),
        )
        if samples:
            edit.add_samples(list(samples))
    return Bundle.load(out)


def artifact_for(runtime: str) -> str:
    """The artifact id a runtime is judged on (``onnx-fp32``, ``openvino-fp32``)."""
    return f"{RUNTIME_FORMATS[runtime]}-fp32"


def export_candidate(bundle: Bundle, *, runtime: str, gate_data: Path | None) -> Bundle:
    """Export ONNX (and the IR for OpenVINO) from the bundle's torch model, through the gate.

    Raises:
        CheckFailed: An artifact was refused by the parity gate.
    """
    formats = ["onnx"] + (["openvino"] if runtime == "openvino" else [])
    report = export_model(
        bundle.path, formats=formats, options=ExportOptions(), data=gate_data, overwrite=True
    )
    refused = [o for o in report.outcomes if o.status != "added"]
    if refused:
        raise CheckFailed(
            "the parity gate refused " + "; ".join(f"{o.artifact_id}: {o.message}" for o in refused)
        )
    return Bundle.load(bundle.path)


def interleaved_latency(
    models: dict[str, tuple[Bundle, str]],
    images: Sequence[Path],
    *,
    rounds: int = 3,
    warmup: int = 3,
    threads: int | None = 2,
) -> dict[str, Latency]:
    """Time several artifacts (possibly of different bundles) in alternating rounds.

    Each round times every model once through the bench harness (batch 1, one request in
    flight, every image); the order alternates between rounds, and each model's result is
    the median of its rounds.

    Args:
        models: ``{key: (bundle, artifact id)}``.
        images: Image files (the same for every model and round).
        rounds: Alternating rounds.
        warmup: Untimed requests at the start of each measurement.
        threads: Runtime threads.
    """
    runs: dict[str, list[Latency]] = {k: [] for k in models}
    keys = list(models)
    for r in range(max(1, rounds)):
        for k in keys if r % 2 == 0 else list(reversed(keys)):
            bundle, art = models[k]
            runs[k].append(measure_latency(bundle, art, images, warmup=warmup, threads=threads))

    def med(xs: list[Latency], attr: str) -> float:
        return float(np.median([getattr(x, attr) for x in xs]))

    return {
        k: Latency(
            artifact=models[k][1],
            p50_ms=med(v, "p50_ms"),
            inference_p50_ms=med(v, "inference_p50_ms"),
            pre_post_p50_ms=med(v, "pre_post_p50_ms"),
            images=len(images),
            warmup=warmup,
            rounds=len(v),
        )
        for k, v in runs.items()
    }


def accuracy(
    bundle: Bundle, artifact: str, eval_data: Path, *, record: bool = True
) -> tuple[str, float]:
    """``(metric name, value)``: mAP50-95 (detection) or top-1 (classification) of an
    artifact on labelled data, with the eval stage's protocol (recorded in the bundle)."""
    rep = evaluate_bundle(
        bundle,
        eval_data,
        artifact=artifact,
        protocol=Protocol(),
        record=record,
        progress=False,
    )
    key = "top1" if bundle.spec.task == "classify" else "map50_95"
    return key, float(rep.metrics[key])
