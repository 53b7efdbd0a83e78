"""The triton target: a Triton Inference Server model repository and a client.

::

    OUT/
      model_repository/NAME/config.pbtxt    backend, shapes, dynamic batching, instances
      model_repository/NAME/1/model.onnx     (or model.xml + model.bin, or model.plan)
      client/cvdeploy_triton_client.py       cvdeploy's preprocessing + decoding/NMS
      client/spec.json                       the spec and the artifact's inputs/outputs
      README.md

The instance group and the preferred batch sizes come from the bundle's benchmarks: one
instance per ``cores / threads`` of the fastest measured configuration, and the batch sizes
that were measured. Triton loads plain files: an encrypted artifact is refused.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.deploy.base import PackageOptions, PackageResult, target_artifact
from cvdeploy.deploy.docker import render_template
from cvdeploy.errors import UsageError
from cvdeploy.spec import TensorSpec

__all__ = ["TRITON_DTYPES", "config_pbtxt", "instance_plan", "package_triton"]

TRITON_FORMATS = ("onnx", "openvino", "tensorrt")
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
}
_BACKENDS = {
    "onnx": ('backend: "onnxruntime"', "model.onnx"),
    "openvino": ('backend: "openvino"', "model.xml"),
    "tensorrt": ('platform: "tensorrt_plan"', "model.plan"),
}


def triton_name(bundle: Bundle) -> str:
    """A model name Triton accepts (letters, digits, ``_``, ``-``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", bundle.name) or "model"


def instance_plan(art: Artifact, bundle: Bundle, max_batch: int) -> dict[str, Any]:
    """Instances, threads per instance and preferred batch sizes from the benchmarks."""
    lat = [c for c in art.checks if c.kind == "latency" and c.data.get("e2e_ms")]
    rec = bundle.manifest.recommended
    threads = rec.options.threads if rec is not None and rec.artifact == art.id else None
    cores = None
    source = "not measured: one instance, the runtime's threads"
    if lat:
        best = min(lat, key=lambda c: float((c.data["e2e_ms"] or {}).get("p50") or 1e9))
        threads = threads or best.data.get("threads")
        cores = ((best.data.get("environment") or {}).get("cpu") or {}).get("logical_cores")
        source = f"from benchmark {best.name!r}"
    count = max(1, int(cores) // int(threads)) if cores and threads else 1
    batches = sorted(
        {
            int(c.data["batch"])
            for c in lat
            if c.data.get("batch") and 1 < c.data["batch"] <= max_batch
        }
    )
    preferred = batches or sorted({max(1, max_batch // 2), max_batch})
    return {"count": count, "threads": threads, "preferred": preferred, "source": source}


def _dims(t: TensorSpec, batched: bool) -> str:
    dims = t.shape[1:] if batched else t.shape
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def config_pbtxt(
    name: str, art: Artifact, *, max_batch: int, plan: dict[str, Any], queue_delay_us: int = 2000
) -> str:
    """``config.pbtxt`` for the artifact (protobuf text format of Triton's ModelConfig)."""
    io = art.io
    batched = io.dynamic_batch
    mb = max_batch if batched else 0
    backend, _ = _BACKENDS[art.format]
    lines = [f'name: "{name}"', backend, f"max_batch_size: {mb}"]
    for kind, tensors in (("input", io.inputs), ("output", io.outputs)):
        lines.append(f"{kind} [")
        body = [
            f'  {{ name: "{t.name}" data_type: {TRITON_DTYPES[t.dtype]} '
            f"dims: {_dims(t, batched)} }}"
            for t in tensors
        ]
        lines.append(",\n".join(body))
        lines.append("]")
    if batched:
        pref = ", ".join(str(b) for b in plan["preferred"])
        lines.append(
            f"dynamic_batching {{ preferred_batch_size: [ {pref} ] "
            f"max_queue_delay_microseconds: {queue_delay_us} }}"
        )
    lines.append(f"instance_group [ {{ count: {plan['count']} kind: KIND_CPU }} ]")
    params: dict[str, str] = {}
    if plan.get("threads") and art.format == "onnx":
        params["intra_op_thread_count"] = str(int(plan["threads"]))
        params["inter_op_thread_count"] = "1"
    if art.format == "openvino":
        if plan.get("threads"):
            params["INFERENCE_NUM_THREADS"] = str(int(plan["threads"]))
        # precision is part of the artifact: pinned, never the plugin's choice
        params["INFERENCE_PRECISION_HINT"] = {"bf16": "bf16", "f16": "f16"}.get(
            art.runtime_precision, "f32"
        )
    for k, v in params.items():
        lines.append(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}')
    return "\n".join(lines) + "\n"


def package_triton(bundle: Bundle, out: Path, options: PackageOptions) -> PackageResult:
    """The triton target (registered in :data:`cvdeploy.deploy.base.TARGETS`)."""
    art = target_artifact(bundle, options.artifact, formats=TRITON_FORMATS, target="triton")
    if art.encryption is not None:
        raise UsageError(
            f"artifact {art.id} is encrypted: Triton loads plain model files",
            hint="package an unencrypted bundle (`cvdeploy decrypt` a copy on a trusted host), "
            "or deploy the encrypted bundle with --target docker / kubernetes",
        )
    name = triton_name(bundle)
    version_dir = out / "model_repository" / name / "1"
    version_dir.mkdir(parents=True)
    _, main_name = _BACKENDS[art.format]
    for i, ref in enumerate(art.files):
        src = bundle.file(ref)
        dst_name = (
            main_name
            if i == 0
            else ("model.bin" if art.format == "openvino" and src.suffix == ".bin" else src.name)
        )
        shutil.copy2(src, version_dir / dst_name)
    max_batch = art.io.fixed_batch or options.max_batch
    plan = instance_plan(art, bundle, max_batch)
    (out / "model_repository" / name / "config.pbtxt").write_text(
        config_pbtxt(name, art, max_batch=max_batch, plan=plan), encoding="utf-8"
    )
    client = out / "client"
    client.mkdir()
    (client / "cvdeploy_triton_client.py").write_text(
        render_template("triton_client.py", {}), encoding="utf-8"
    )
    info = {
        "model": name,
        "artifact": art.id,
        "max_batch": max_batch if art.io.dynamic_batch else art.io.fixed_batch or 1,
        "spec": bundle.spec.model_dump(mode="json"),
        "io": art.io.model_dump(mode="json"),
    }
    (client / "spec.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    serve = (
        "docker run --rm -p 8000:8000 -v $PWD/model_repository:/models "
        "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models"
    )
    (out / "README.md").write_text(
        f"# {name}: Triton model repository\n\n"
        f"Generated by `cvdeploy package --target triton` from artifact `{art.id}` "
        f"({art.format}, {art.precision}, computing in {art.runtime_precision}).\n\n"
        f"```bash\n{serve}\n"
        'cd client && python -c "import cv2; from cvdeploy_triton_client import '
        "TritonPredictor as T; p = T.from_dir('.'); print(p.predict([cv2.imread('x.jpg')]))\"\n"
        "```\n\n"
        f"- Instances: {plan['count']} x {plan['threads'] or 'default'} threads "
        f"({plan['source']}); preferred batch sizes {plan['preferred']}.\n"
        "- Preprocessing and decoding/NMS run in the client (`client/`), with the bundle's "
        "spec: the pipeline that was verified is the pipeline used.\n"
        "- Triton's CPU images are large (10-15 GB) and its ONNX Runtime backend ran about "
        "2x slower than plain ONNX Runtime in reports; `cvdeploy package --target docker` "
        "builds a server image of a few hundred MB with the same model.\n",
        encoding="utf-8",
    )
    return PackageResult(
        target="triton",
        out=out,
        artifact=art.id,
        image=None,
        commands=[serve],
        notes=[f"instances: {plan['count']} ({plan['source']})"],
        details={"model": name, "plan": plan},
    )
