"""Why is INT8 not faster? Measure FP32 and INT8 side by side and name the reasons.

Latency is end-to-end through the :class:`~cvdeploy.pipeline.predictor.Predictor` (the
served pipeline): warm-up, then the median over the same images for both artifacts. The
diagnosis looks at:

- the CPU: INT8 is fast where the CPU has INT8 dot-product instructions (x86 AVX-512 VNNI,
  AVX-VNNI, AMX; ARM dot-product / i8mm); without them INT8 convolutions use AVX2
  ``pmaddubsw`` sequences with little gain over FP32;
- the share of convolutions/MatMuls left in float;
- Q/DQ pairs ONNX Runtime did not fuse into integer kernels (read from the optimized model
  ONNX Runtime writes with ``SessionOptions.optimized_model_filepath``);
- convolutions whose input is dequantized but whose output is not quantized (the Q/DQ placed
  after a SiLU), which ONNX Runtime cannot fuse into ``QLinearConv``;
- dynamic quantization (``ConvInteger`` + ``DynamicQuantizeLinear``), which is slow on CPU;
- pre- and postprocessing time, which INT8 does not shorten.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.bench import SIDE_BY_SIDE_ROUNDS, Latency, measure_side_by_side
from cvdeploy.bundle import Artifact, Bundle
from cvdeploy.environment import cpu_info
from cvdeploy.errors import UsageError
from cvdeploy.pipeline.predictor import Predictor

TARGET_SPEEDUP = 1.3
"""INT8 below this speedup over FP32 gets a diagnosis."""
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
_COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "NchwcConv"}
_DYNAMIC = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(slots=True)
class Finding:
    """One reason INT8 may be slow, and what to try."""

    code: str
    message: str
    fix: str


@dataclass(slots=True)
class Explanation:
    """The speed diagnosis of an INT8 artifact."""

    artifact: str
    source: str | None
    cpu: dict[str, Any]
    int8_instructions: list[str]
    ops: dict[str, Any]
    latency: dict[str, Latency] = field(default_factory=dict)
    speedup: float | None = None
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def onnx_op_stats(model_path: Path, *, threads: int | None = None) -> dict[str, Any]:
    """Operator counts of an ONNX model before and after ONNX Runtime's optimizations."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path), load_external_data=False)
    before = Counter(n.op_type for n in model.graph.node)
    with tempfile.TemporaryDirectory(prefix="cvdeploy-explain-") as tmp:
        opt_path = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(opt_path)
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(str(opt_path), load_external_data=False)
    after = Counter(n.op_type for n in opt.graph.node)
    fused = sum(c for op, c in after.items() if op.startswith(("QLinear", "QGemm")))
    fused += after.get("MatMulIntegerToFloat", 0) + after.get("DynamicQuantizeMatMul", 0)
    float_compute = sum(c for op, c in after.items() if op in _COMPUTE)
    dynamic = sum(c for op, c in after.items() if op in _DYNAMIC)
    int_compute = fused + after.get("ConvInteger", 0) + after.get("MatMulInteger", 0)
    total_compute = float_compute + int_compute
    unq, consumers = _outputs_not_quantized(model)
    return {
        "format": "onnx",
        "graph": dict(sorted(before.items())),
        "optimized": dict(sorted(after.items())),
        "qdq_nodes": sum(before[o] for o in _QDQ),
        "qdq_left_after_optimization": sum(after[o] for o in _QDQ),
        "fused_int8_ops": fused,
        "dynamic_ops": dynamic + sum(before[o] for o in _DYNAMIC if o not in after),
        "compute_ops": total_compute,
        "float_compute_ops": float_compute,
        "float_share": float_compute / total_compute if total_compute else 0.0,
        "quantized_input_float_output": unq,
        "float_output_consumers": consumers,
    }


def _outputs_not_quantized(model: Any) -> tuple[int, dict[str, int]]:
    """Compute nodes with a dequantized input whose output is not quantized again.

    ONNX Runtime runs a convolution in INT8 only as ``DequantizeLinear -> Conv ->
    QuantizeLinear`` (fused into ``QLinearConv``). A quantizer that puts the output's Q/DQ
    after a following activation instead (NNCF does so for Conv + SiLU, for accuracy)
    leaves that Conv in float between Dequantize nodes.

    Returns:
        The number of such nodes and the op types that consume their outputs.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    count = 0
    ops: Counter[str] = Counter()
    for n in model.graph.node:
        if n.op_type not in _COMPUTE or not n.input or not n.output:
            continue
        src = producer.get(n.input[0])
        if src is None or src.op_type != "DequantizeLinear":
            continue
        users = consumers.get(n.output[0], [])
        if users and all(u.op_type == "QuantizeLinear" for u in users):
            continue
        count += 1
        ops.update(u.op_type for u in users if u.op_type != "QuantizeLinear")
    return count, dict(ops.most_common())


def openvino_op_stats(
    model_path: Path, image: np.ndarray | None, predictor: Predictor | None
) -> dict[str, Any]:
    """FakeQuantize count, and which convolutions the CPU plugin runs in INT8 (PERF_COUNT)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model_path))
    types = Counter(op.get_type_name() for op in model.get_ordered_ops())
    stats: dict[str, Any] = {
        "format": "openvino",
        "graph": {k: v for k, v in sorted(types.items()) if k not in ("Constant",)},
        "fake_quantize": types.get("FakeQuantize", 0),
    }
    if image is None or predictor is None:
        return stats
    compiled = core.compile_model(model, "CPU", {"PERF_COUNT": True})
    req = compiled.create_infer_request()
    x, _ = predictor.preprocess([image])
    req.infer({0: x})
    conv = [
        p
        for p in req.profiling_info
        if p.node_type in ("Convolution", "GroupConvolution", "FullyConnected", "MatMul")
        and p.status.name == "EXECUTED"
    ]
    int8 = [p for p in conv if any(t in p.exec_type.lower() for t in ("i8", "u8"))]
    stats.update(
        compute_ops=len(conv),
        int8_compute_ops=len(int8),
        float_compute_ops=len(conv) - len(int8),
        float_share=(len(conv) - len(int8)) / len(conv) if conv else 0.0,
    )
    return stats


def _findings(
    cpu: dict[str, Any], ops: dict[str, Any], lat: dict[str, Latency], speedup: float | None
) -> list[Finding]:
    out: list[Finding] = []
    have = [f for f in INT8_FLAGS if f in cpu["flags"]]
    if not have:
        out.append(
            Finding(
                "no-int8-instructions",
                f"this CPU ({cpu['model']}) has no INT8 dot-product instructions "
                "(AVX-512 VNNI, AVX-VNNI, AMX, ARM dot-product/i8mm): INT8 convolutions "
                "fall back to AVX2 multiply-add sequences with little gain over FP32",
                "deploy INT8 on a CPU with VNNI/AMX (Intel Ice Lake / Sapphire Rapids, AMD "
                "Zen 4+) or ARM dot-product; on this CPU compare FP32 with OpenVINO, or keep FP32",
            )
        )
    if ops.get("dynamic_ops"):
        out.append(
            Finding(
                "dynamic-quantization",
                f"{ops['dynamic_ops']} dynamic-quantization op(s) (ConvInteger/MatMulInteger/"
                "DynamicQuantizeLinear): activation scales are computed at run time and "
                "ONNX Runtime's ConvInteger has no fast CPU kernel, often slower than FP32",
                "quantize statically from the FP32 model (import or export it into the "
                "bundle first): `cvdeploy quantize BUNDLE --calib "
                "DATA --backend onnxruntime` (Q/DQ, fused into QLinearConv) or "
                "`--backend openvino`",
            )
        )
    unq = int(ops.get("quantized_input_float_output", 0))
    if unq and ops.get("format") == "onnx":
        after = ", ".join(list(ops.get("float_output_consumers") or {})[:3]) or "graph outputs"
        out.append(
            Finding(
                "output-not-quantized",
                f"{unq} convolution(s)/MatMul(s) take a dequantized input but their output is "
                f"not quantized (it feeds {after} in float): ONNX Runtime fuses only "
                "DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv, so these run "
                "in float with the Q/DQ conversions added on top. Quantizers put the Q/DQ "
                "after a non-ReLU activation such as SiLU (Sigmoid x Mul) for accuracy",
                "on ONNX Runtime, `--engine ort` (quantize_static) quantizes every conv output "
                "and fuses all of them, but a per-tensor scale before SiLU can cost a lot of "
                "mAP (check it with --eval-data/--max-drop); `--backend openvino` runs the "
                "activation inside its INT8 convolution and keeps this placement fast",
            )
        )
    left = ops.get("qdq_left_after_optimization", 0)
    if left and ops.get("qdq_nodes"):
        out.append(
            Finding(
                "unfused-qdq",
                f"{left} QuantizeLinear/DequantizeLinear node(s) remain after ONNX Runtime's "
                f"optimizations ({ops.get('fused_int8_ops', 0)} fused INT8 op(s)): each "
                "unfused pair converts tensors between float and INT8 in the hot path",
                "see output-not-quantized: its convolutions are where these come from"
                if unq
                else "leave fewer nodes in float (fewer --keep-float patterns, a looser "
                "--max-drop), keep opset >= 13 and the default Q/DQ op set, so that "
                "DQ->op->Q groups fuse into QLinear kernels",
            )
        )
    share = float(ops.get("float_share", 0.0))
    if share > 0.1:
        out.append(
            Finding(
                "float-ops",
                f"{share:.0%} of the convolutions/MatMuls run in float "
                f"({ops.get('float_compute_ops')} of {ops.get('compute_ops')})",
                "check which nodes were kept in float (`cvdeploy info`, provenance "
                "keep_float); relax --max-drop or --keep-float, or use a backend that "
                "supports those ops in INT8",
            )
        )
    int8 = next((v for k, v in lat.items() if k == "int8"), None)
    if int8 is not None and int8.p50_ms > 0 and int8.pre_post_p50_ms / int8.p50_ms > 0.3:
        out.append(
            Finding(
                "pre-post-bound",
                f"pre- and postprocessing take {int8.pre_post_p50_ms:.1f} ms of "
                f"{int8.p50_ms:.1f} ms end to end ({int8.pre_post_p50_ms / int8.p50_ms:.0%}); "
                "INT8 only shortens inference",
                "raise --conf for serving (fewer boxes into NMS), batch requests, or move "
                "preprocessing into the model/runtime",
            )
        )
    if speedup is not None and speedup < TARGET_SPEEDUP and not out:
        out.append(
            Finding(
                "small-model",
                f"INT8 is only {speedup:.2f}x faster and no specific cause was found: small "
                "or depthwise-heavy models are memory- or overhead-bound",
                "measure with more threads/larger batch (`cvdeploy bench`), or keep FP32",
            )
        )
    return out


def _pair(bundle: Bundle, artifact: Artifact) -> Artifact | None:
    src = artifact.produced_by.source
    if src and any(a.id == src for a in bundle.manifest.artifacts):
        return bundle.artifact(src)
    for a in bundle.manifest.artifacts:
        if a.precision == "fp32" and a.format == artifact.format:
            return a
    return None


def explain_artifact(
    bundle: Bundle,
    artifact_id: str | None = None,
    *,
    images: Sequence[Path] = (),
    source_id: str | None = None,
    latency: dict[str, Latency] | None = None,
    threads: int | None = None,
) -> Explanation:
    """Diagnose why an INT8 artifact is (not) faster than its FP32 source.

    Args:
        bundle: The bundle.
        artifact_id: The INT8 artifact (default: the most recent INT8 artifact).
        images: Image files for latency (default: the bundle's sample images).
        source_id: FP32 artifact to compare with (default: the INT8 artifact's source, else
            the FP32 artifact of the same format).
        latency: Measurements already made (keys ``fp32``/``int8``); skips re-measuring.
        threads: Runtime threads for latency.

    Raises:
        UsageError: No INT8 artifact, or the named one is not INT8.
    """
    if artifact_id is None:
        int8s = [a for a in bundle.manifest.artifacts if a.precision.startswith("int8")]
        if not int8s:
            raise UsageError(
                f"bundle {bundle.name!r} has no INT8 artifact to explain",
                hint="create one with `cvdeploy quantize BUNDLE --calib DATA`",
            )
        art = int8s[-1]
    else:
        art = bundle.artifact(artifact_id)
        if not art.precision.startswith("int8"):
            raise UsageError(
                f"artifact {art.id!r} is {art.precision}, not INT8",
                hint="pass --artifact with an INT8 artifact id (see `cvdeploy info`)",
            )
    src = bundle.artifact(source_id) if source_id else _pair(bundle, art)
    notes: list[str] = []
    imgs = list(images) or bundle.sample_images()[:16]
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if not imgs:
        import cv2

        tmp = tempfile.TemporaryDirectory(prefix="cvdeploy-explain-img-")
        h, w = bundle.spec.imgsz
        gray = Path(tmp.name) / "gray.png"
        cv2.imwrite(str(gray), np.full((h, w, 3), 114, dtype=np.uint8))
        imgs = [gray]
        notes.append(
            "the bundle stores no sample images: timed on one synthetic gray image "
            "(inference is representative, postprocessing is not); pass --images for real ones"
        )
    try:
        return _explain(bundle, art, src, imgs, latency, threads, notes)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _explain(
    bundle: Bundle,
    art: Artifact,
    src: Artifact | None,
    imgs: list[Path],
    latency: dict[str, Latency] | None,
    threads: int | None,
    notes: list[str],
) -> Explanation:
    lat = dict(latency or {})
    todo = {k: a.id for k, a in (("fp32", src), ("int8", art)) if a is not None and k not in lat}
    if todo:  # one artifact alone needs no alternation: one round
        rounds = SIDE_BY_SIDE_ROUNDS if len(todo) > 1 else 1
        lat.update(measure_side_by_side(bundle, todo, imgs, rounds=rounds, threads=threads))
    speedup = lat["fp32"].p50_ms / lat["int8"].p50_ms if "fp32" in lat else None
    path = bundle.model_file(art)
    if art.format == "onnx":
        ops = onnx_op_stats(path, threads=threads)
    elif art.format == "openvino":
        from cvdeploy.data.io import read_image

        with Predictor.from_bundle(bundle, art.id, batch=1) as pred:
            ops = openvino_op_stats(path, read_image(imgs[0]), pred)
    else:
        ops = {"format": art.format, "note": "no operator inspection for this format"}
    cpu = cpu_info()
    exp = Explanation(
        artifact=art.id,
        source=src.id if src else None,
        cpu=cpu,
        int8_instructions=[f for f in INT8_FLAGS if f in cpu["flags"]],
        ops=ops,
        latency=lat,
        speedup=speedup,
        notes=notes,
    )
    if speedup is None or speedup < TARGET_SPEEDUP:
        exp.findings = _findings(cpu, ops, lat, speedup)
    return exp
