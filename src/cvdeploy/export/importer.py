"""Import an external ONNX model or OpenVINO IR into a bundle.

Ultralytics exports are recognised from their own metadata (ONNX ``metadata_props``, or
``metadata.yaml`` beside an IR). Presets give the preprocessing and decoder of known model
families; flags override what was read. What cannot be determined is asked for in the error.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cvdeploy.bundle import Bundle, Provenance
from cvdeploy.coconames import COCO80
from cvdeploy.environment import fingerprint
from cvdeploy.errors import CvdeployError, InputError, ModelLoadError, SpecError, UsageError
from cvdeploy.jsonsafe import loads as json_loads
from cvdeploy.pipeline.heads import class_scores_shape, get_head
from cvdeploy.spec import PRESETS, Decoder, IOSpec, ModelSpec, Preprocess, TensorSpec


@dataclass(frozen=True, slots=True)
class ImportOverrides:
    """Flags that override what was read from the model (``None``: not given)."""

    preset: str | None = None
    names: tuple[str, ...] | None = None
    imgsz: tuple[int, int] | None = None
    decoder: str | None = None
    color: str | None = None
    align: str | None = None
    resize: str | None = None
    pad: int | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    task: str | None = None


@dataclass(slots=True)
class ModelFacts:
    """What could be read from the model file itself."""

    format: str
    files: list[Path]
    io: IOSpec
    metadata: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    source_kind: str = "unknown"
    output_op: str | None = None
    """The operator that computes the first output, looking through reshapes (``Softmax``
    tells that a classifier already emits probabilities)."""


_PASS_THROUGH = {"Reshape", "Flatten", "Squeeze", "Identity", "Transpose", "Unsqueeze"}
_SOFTMAX_OPS = {"Softmax", "SoftMax"}  # ONNX, OpenVINO


def find_model_file(path: Path) -> Path:
    """The ONNX or OpenVINO IR file named by ``path`` (a file, or a folder holding one)."""
    if not path.exists():
        raise InputError(
            f"{path} does not exist",
            hint="give an .onnx file, an OpenVINO .xml, or a folder holding one",
        )
    if path.is_file():
        if path.suffix.lower() not in (".onnx", ".xml"):
            raise InputError(f"{path.name} is not an ONNX (.onnx) or OpenVINO IR (.xml) file")
        return path
    xmls = sorted(path.glob("*.xml"))
    onnxs = sorted(path.glob("*.onnx"))
    found = xmls or onnxs
    if len(found) != 1:
        what = ", ".join(p.name for p in found) if found else "no .xml or .onnx file"
        raise InputError(
            f"{path} must hold exactly one model file, found: {what}",
            hint="pass the model file itself",
        )
    return found[0]


def read_names_file(path: Path) -> tuple[str, ...]:
    """Class names from a text file (one per line), or a yaml/json list, dict or ``names:``."""
    if not path.is_file():
        raise InputError(f"names file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        try:
            data = json_loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (ValueError, RecursionError, yaml.YAMLError) as exc:  # JSON, too deep
            raise InputError(f"names file {path} is not valid: {str(exc)[:300]}") from None
        if isinstance(data, dict) and "names" in data:
            data = data["names"]
        names = _names_from(data)
        if names is None:
            raise InputError(f"names file {path} holds no list or index->name mapping")
        return names
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise InputError(f"names file {path} is empty")
    return names


def _names_from(data: Any) -> tuple[str, ...] | None:
    if isinstance(data, list | tuple):
        return tuple(str(n) for n in data)
    if isinstance(data, dict):
        try:
            keys = sorted(int(k) for k in data)
        except (TypeError, ValueError):
            return None
        if keys != list(range(len(keys))):
            return None
        return tuple(str(data[k] if k in data else data[str(k)]) for k in keys)
    return None


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    out = []
    for d in shape:
        try:
            v = int(d)
        except (TypeError, ValueError):
            v = -1
        out.append(v if v > 0 else -1)
    return tuple(out)


def _onnx_facts(path: Path) -> ModelFacts:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ModelLoadError(
            f"{path.name} is not a readable ONNX model: {exc}".splitlines()[0],
            hint="the file may be truncated or corrupted",
        ) from exc
    inits = {i.name for i in model.graph.initializer}
    elem = {1: "float32", 10: "float16", 2: "uint8", 3: "int8"}

    def tensor(v: Any) -> TensorSpec:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        return TensorSpec(name=v.name, shape=_dims(dims), dtype=elem.get(tt.elem_type, "float32"))

    inputs = tuple(tensor(i) for i in model.graph.input if i.name not in inits)
    outputs = tuple(tensor(o) for o in model.graph.output)
    if len(inputs) != 1:
        raise SpecError(
            f"{path.name} has {len(inputs)} inputs; cvdeploy handles single-image-input models"
        )
    ops = {n.op_type for n in model.graph.node}
    if ops & {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}:
        precision = "int8-dynamic"
    elif ops & {"QuantizeLinear", "QLinearConv", "DequantizeLinear"}:
        precision = "int8"
    elif any(i.data_type == 10 for i in model.graph.initializer):
        precision = "fp16"
    else:
        precision = "fp32"
    meta = {p.key: p.value for p in model.metadata_props}
    io = IOSpec(inputs=inputs, outputs=outputs, layout=_layout(inputs[0].shape))
    files = [path] + [path.with_name(f) for f in _external_files(model)]
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(outputs[0].name) if outputs else None
    while node is not None and node.op_type in _PASS_THROUGH and node.input:
        node = producer.get(node.input[0])
    return ModelFacts(
        "onnx",
        files,
        io,
        meta,
        precision,
        "ultralytics" if "ultralytics" in meta.get("author", "").lower() else "onnx",
        node.op_type if node is not None else None,
    )


def _external_files(model: Any) -> list[str]:
    names = set()
    for init in model.graph.initializer:
        for kv in init.external_data:
            if kv.key == "location":
                names.add(kv.value)
    return sorted(names)


def _layout(shape: tuple[int, ...]) -> str:
    if len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3):
        return "NHWC"
    return "NCHW"


def _openvino_facts(xml: Path) -> ModelFacts:
    import openvino as ov

    bin_file = xml.with_suffix(".bin")
    if not bin_file.is_file():
        raise ModelLoadError(f"{xml.name} has no weights file {bin_file.name} beside it")
    try:
        model = ov.Core().read_model(str(xml))
    except Exception as exc:  # openvino raises RuntimeError
        raise ModelLoadError(
            f"OpenVINO cannot read {xml.name}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}",
            hint="the .xml/.bin pair may be corrupted",
        ) from exc
    ovt = {"f32": "float32", "f16": "float16", "u8": "uint8", "i8": "int8"}

    def tensor(port: Any, i: int, prefix: str) -> TensorSpec:
        names = sorted(port.get_names())
        shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
        return TensorSpec(
            name=names[0] if names else f"{prefix}{i}",
            shape=_dims(shape),
            dtype=ovt.get(port.get_element_type().get_type_name(), "float32"),
        )

    inputs = tuple(tensor(p, i, "input") for i, p in enumerate(model.inputs))
    outputs = tuple(tensor(p, i, "output") for i, p in enumerate(model.outputs))
    if len(inputs) != 1:
        raise SpecError(
            f"{xml.name} has {len(inputs)} inputs; cvdeploy handles single-image-input models"
        )
    ops = {o.get_type_name() for o in model.get_ops()}
    precision = "int8" if "FakeQuantize" in ops else "fp32"
    meta: dict[str, Any] = {}
    meta_file = xml.parent / "metadata.yaml"
    if meta_file.is_file():
        try:
            meta = yaml.safe_load(meta_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{meta_file} is not valid YAML: {exc}") from exc
    files = [xml, bin_file] + ([meta_file] if meta_file.is_file() else [])
    kind = "ultralytics" if "ultralytics" in str(meta.get("author", "")).lower() else "openvino"
    node = model.outputs[0].get_node().input_value(0).get_node() if model.outputs else None
    while node is not None and node.get_type_name() in _PASS_THROUGH and node.get_input_size():
        node = node.input_value(0).get_node()
    return ModelFacts(
        "openvino",
        files,
        IOSpec(inputs=inputs, outputs=outputs, layout=_layout(inputs[0].shape)),
        meta,
        precision,
        kind,
        node.get_type_name() if node is not None else None,
    )


def read_model_facts(path: Path) -> ModelFacts:
    """Read inputs, outputs, precision and metadata from an ONNX file or OpenVINO IR."""
    f = find_model_file(path)
    return _onnx_facts(f) if f.suffix.lower() == ".onnx" else _openvino_facts(f)


def _meta_value(meta: dict[str, Any], key: str) -> Any:
    v = meta.get(key)
    if isinstance(v, str):
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return v


def _hw(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, list | tuple) and len(v) == 2:
        return (int(v[0]), int(v[1]))
    return None


def build_spec(facts: ModelFacts, ov: ImportOverrides, *, notes: list[str]) -> ModelSpec:
    """Combine model facts, the preset and the flags into a spec (flags win).

    Raises:
        SpecError: Something needed could not be determined; the message says which flag.
    """
    meta = facts.metadata
    preset = ov.preset or ("ultralytics" if facts.source_kind == "ultralytics" else None)
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    out_shape = facts.io.outputs[0].shape
    task = ov.task or ("classify" if str(_meta_value(meta, "task")) == "classify" else None)
    if task is None and ov.decoder == "logits":
        task = "classify"
    if task is None and preset is None and ov.decoder is None:
        if len(class_scores_shape(out_shape)) == 2:  # [B, nc] or Caffe-style [B, nc, 1, 1]
            task = "classify"
        else:
            raise SpecError(
                "cannot tell how to decode this model's output "
                f"{list(out_shape)}: it carries no Ultralytics metadata",
                hint="pass --preset ultralytics|yolox|yolov5, or --decoder yolov8|yolox|yolov5|"
                "logits with --color/--align/--scale as the model was trained",
            )
    task = task or "detect"
    base_pp: Preprocess
    base_dec: Decoder
    if preset is not None:
        base_pp = PRESETS[preset].preprocess
        base_dec = PRESETS[preset].decoder
    elif task == "classify":
        base_pp = Preprocess(resize="stretch", color="rgb", scale=1 / 255)
        base_dec = Decoder(kind="logits")
    else:
        base_pp = Preprocess()
        base_dec = Decoder(kind=ov.decoder or "yolov8")  # type: ignore[arg-type]
    if task == "classify" and base_dec.kind != "logits":
        base_dec = Decoder(kind="logits")
    pp_update = {
        k: v
        for k, v in {
            "color": ov.color,
            "align": ov.align,
            "resize": ov.resize,
            "pad_value": ov.pad,
            "scale": ov.scale,
            "mean": ov.mean,
            "std": ov.std,
        }.items()
        if v is not None
    }
    if ov.color == "gray" and ov.mean is None:
        pp_update.setdefault("mean", (0.0,))
        pp_update.setdefault("std", (1.0,))
    dec_update: dict[str, Any] = {"kind": ov.decoder} if ov.decoder else {}
    if task == "classify":
        if len(out_shape) > 2 and len(class_scores_shape(out_shape)) == 2:
            notes.append(
                f"the classifier output {list(out_shape)} is read as [B, nc] "
                "(trailing 1x1 dimensions dropped)"
            )
        if facts.output_op in _SOFTMAX_OPS:
            dec_update["softmax"] = False
            notes.append(
                f"the model ends in {facts.output_op}: its outputs are probabilities, used as "
                "they are (no second softmax)"
            )
    try:
        pp = Preprocess.model_validate({**base_pp.model_dump(), **pp_update})
        dec = Decoder.model_validate({**base_dec.model_dump(), **dec_update})
    except ValueError as exc:
        raise SpecError(f"invalid preprocessing or decoder options: {exc}") from exc

    in_shape = facts.io.input.shape
    channels = in_shape[1] if facts.io.layout == "NCHW" else in_shape[-1]
    if channels == 1 and pp.color != "gray":
        pp = Preprocess.model_validate(
            {**pp.model_dump(), "color": "gray", "mean": pp.mean[:1], "std": pp.std[:1]}
        )
        notes.append("the model takes 1 channel: images are converted to grayscale")
    static_hw = in_shape[2:4] if facts.io.layout == "NCHW" else in_shape[1:3]
    imgsz = (
        ov.imgsz
        or _hw(_meta_value(meta, "imgsz"))
        or ((static_hw[0], static_hw[1]) if -1 not in static_hw else None)
    )
    if imgsz is None:
        raise SpecError(
            "the model's input size is dynamic and not in its metadata",
            hint="pass --imgsz N (the size it was trained/validated at)",
        )
    if -1 not in static_hw and tuple(static_hw) != tuple(imgsz):
        raise SpecError(
            f"--imgsz {imgsz[0]}x{imgsz[1]} does not fit the model's fixed input "
            f"{static_hw[0]}x{static_hw[1]}",
            hint="drop --imgsz",
        )

    nc = get_head(dec.kind).num_classes(out_shape)
    names = ov.names or _names_from(_meta_value(meta, "names"))
    if names is None:
        if nc == 80 and task == "detect":
            names = COCO80
            notes.append("assumed the 80 COCO class names (pass --names FILE if they differ)")
        else:
            raise SpecError(
                f"the class names of this model ({nc if nc else 'unknown'} classes) "
                "are not in its metadata",
                hint="pass --names FILE (one per line, or a yaml/json list)",
            )
    if nc is not None and nc != len(names):
        raise SpecError(
            f"the model emits {nc} classes but {len(names)} names were given",
            hint="check --names and --decoder",
        )
    stride = int(_meta_value(meta, "stride") or (max(dec.strides) if task == "detect" else 1))
    try:
        return ModelSpec(
            task=task,
            names=tuple(names),
            imgsz=imgsz,
            preprocess=pp,  # type: ignore[arg-type]
            decoder=dec,
            stride=stride,
        )
    except ValueError as exc:
        raise SpecError(f"inconsistent spec: {exc}") from exc


def _smoke_test(bundle: Bundle, artifact_id: str) -> None:
    """Run one gray image through the whole pipeline, turning failures into clear errors."""
    from cvdeploy.pipeline.predictor import Predictor

    spec = bundle.spec
    img = np.full((spec.imgsz[0], spec.imgsz[1], 3), 114, dtype=np.uint8)
    try:
        with Predictor.from_bundle(bundle, artifact_id, batch=1) as p:
            p.predict([img])
    except CvdeployError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"the imported model failed a test inference: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            hint="check --preset/--decoder/--imgsz against the model",
        ) from exc


def import_model(
    path: Path | str,
    *,
    out: Path | str,
    name: str | None = None,
    overrides: ImportOverrides | None = None,
    overwrite: bool = False,
    samples: Sequence[Path] = (),
) -> tuple[Bundle, list[str]]:
    """Wrap an external ONNX file or OpenVINO IR into a new bundle.

    Args:
        path: The model file, or a folder holding exactly one.
        out: The bundle directory to create.
        name: Bundle name (default: the model file's stem).
        overrides: Flags that override what was read from the model.
        overwrite: Replace an existing bundle at ``out``.
        samples: Sample images to store in the bundle (for later parity checks).

    Returns:
        The bundle and notes about assumptions made.
    """
    src = Path(path)
    ov = overrides or ImportOverrides()
    facts = read_model_facts(src)
    notes: list[str] = []
    spec = build_spec(facts, ov, notes=notes)
    main = facts.files[0]
    art_id = f"{facts.format}-{facts.precision}"
    details = {"source": str(main.resolve()), "notes": notes, "overrides": _asdict(ov)}
    with Bundle.create(
        out,
        name=name or main.stem,
        spec=spec,
        overwrite=overwrite,
        action="import",
        details=details,
    ) as edit:
        d = edit.artifact_dir(art_id)
        main_name = "model.onnx" if facts.format == "onnx" else "model.xml"
        for f in facts.files:
            if f == main:
                dst = d / main_name
            elif f.suffix == ".bin" and facts.format == "openvino":
                dst = d / "model.bin"
            else:
                dst = d / f.name
            shutil.copyfile(f, dst)
        edit.add_artifact(
            artifact_id=art_id,
            format=facts.format,
            precision=facts.precision,
            io=facts.io,
            main_file=main_name,
            produced_by=Provenance(
                tool="import",
                options={
                    "source": str(main.resolve()),
                    "source_kind": facts.source_kind,
                    **(
                        {
                            "classifier_output": "logits"
                            if spec.decoder.softmax
                            else "probabilities",
                            "output_shape": list(facts.io.outputs[0].shape),
                        }
                        if spec.task == "classify"
                        else {}
                    ),
                },
            ),
            environment=fingerprint(),
        )
        if samples:
            edit.add_samples(list(samples))
        # Check the whole pipeline on the staged copy before the bundle appears.
        _smoke_test(Bundle(edit.staging, edit.manifest), art_id)
    return Bundle.load(out), notes


def _asdict(ov: ImportOverrides) -> dict[str, Any]:
    return {k: getattr(ov, k) for k in ov.__slots__ if getattr(ov, k) is not None}
