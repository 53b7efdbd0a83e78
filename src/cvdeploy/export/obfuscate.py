"""Obfuscated ONNX artifacts: opaque names, no doc strings, no producer metadata.

Node names become ``n<i>``, tensor and initializer names ``t<i>`` (the graph's real inputs
and outputs keep their names, which the spec and the runtimes use), doc strings and
``value_info`` are dropped, and the producer, domain, version and metadata entries are
cleared (except ``cvdeploy*`` keys; the spec stays in the manifest). The weights and the
computation are untouched: an artifact transform of the export stage, the new artifact must
pass the export gate (:func:`cvdeploy.export.gate.run_gate`) against its source before it is
added.

Obfuscation raises the cost of reading a model's architecture from the file; it does not
protect the weights (encrypt for that) and does not stop a determined reverse engineer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdeploy.bundle import Bundle, Provenance
from cvdeploy.data import read_image
from cvdeploy.environment import fingerprint
from cvdeploy.errors import CheckFailed, InputError, UsageError
from cvdeploy.export.gate import gate_images, run_gate

__all__ = ["ObfuscateReport", "obfuscate_bundle", "obfuscate_model"]

_MAX_PROTO = 2_000_000_000  # protobuf's 2 GiB limit: larger models keep external weights
_KEEP_META_PREFIX = "cvdeploy"


@dataclass(slots=True)
class _Renamer:
    keep: set[str]
    names: dict[str, str] = field(default_factory=dict)
    nodes: int = 0

    def tensor(self, name: str) -> str:
        if not name or name in self.keep:
            return name
        if name not in self.names:
            self.names[name] = f"t{len(self.names)}"
        return self.names[name]

    def node(self) -> str:
        self.nodes += 1
        return f"n{self.nodes - 1}"


def obfuscate_model(model: Any) -> tuple[Any, dict[str, int]]:
    """Rename and strip an ONNX ``ModelProto`` in place.

    Args:
        model: The loaded model (with its weights).

    Returns:
        The model and counts of what was renamed.
    """
    g = model.graph
    inits = {i.name for i in g.initializer} | {s.values.name for s in g.sparse_initializer}
    keep = {v.name for v in g.input if v.name not in inits} | {v.name for v in g.output}
    r = _Renamer(keep=keep)
    _graph(g, r)
    g.name = "main"
    model.doc_string = ""
    model.producer_name = ""
    model.producer_version = ""
    model.domain = ""
    model.model_version = 0
    kept = [(p.key, p.value) for p in model.metadata_props if p.key.startswith(_KEEP_META_PREFIX)]
    del model.metadata_props[:]
    for k, v in kept:
        model.metadata_props.add(key=k, value=v)
    for fn in model.functions:
        fn.doc_string = ""
    return model, {"nodes": r.nodes, "tensors": len(r.names), "initializers": len(inits)}


def _graph(g: Any, r: _Renamer) -> None:
    from onnx import AttributeProto

    g.doc_string = ""
    del g.value_info[:]  # intermediate shapes: re-inferred by the runtime
    for v in (*g.input, *g.output):
        v.name = r.tensor(v.name)
        v.doc_string = ""
    for t in g.initializer:
        t.name = r.tensor(t.name)
        t.doc_string = ""
    for s in g.sparse_initializer:
        s.values.name = r.tensor(s.values.name)
        s.indices.name = r.tensor(s.indices.name) if s.indices.name else ""
    for qa in g.quantization_annotation:
        qa.tensor_name = r.tensor(qa.tensor_name)
    for n in g.node:
        n.name = r.node()
        n.doc_string = ""
        n.input[:] = [r.tensor(x) for x in n.input]
        n.output[:] = [r.tensor(x) for x in n.output]
        for a in n.attribute:
            a.doc_string = ""
            if a.type == AttributeProto.GRAPH:
                _graph(a.g, r)
            elif a.type == AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _graph(sub, r)


@dataclass(slots=True)
class ObfuscateReport:
    """What :func:`obfuscate_bundle` produced."""

    artifact: str
    source: str
    renamed: dict[str, int]
    parity: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "artifact": self.artifact,
            "source": self.source,
            "renamed": self.renamed,
            "parity": self.parity,
        }


def _source(bundle: Bundle, artifact: str | None) -> Any:
    if artifact is not None:
        art = bundle.artifact(artifact)
        if art.format != "onnx":
            raise UsageError(
                f"artifact {art.id} is {art.format}: obfuscation works on ONNX artifacts",
                hint="pick an onnx artifact (see `cvdeploy info BUNDLE`)",
            )
        return art
    onnx_arts = [a for a in bundle.manifest.artifacts if a.format == "onnx"]
    plain = [a for a in onnx_arts if a.encryption is None and a.produced_by.tool != "obfuscate"]
    for a in plain:
        if a.precision == "fp32":
            return a
    if plain:
        return plain[0]
    encrypted = [a.id for a in onnx_arts if a.encryption is not None]
    raise UsageError(
        f"bundle {bundle.name!r} has no plain ONNX artifact to obfuscate"
        + (f" ({', '.join(encrypted)} encrypted)" if encrypted else ""),
        hint="obfuscate before encrypting, or export one with `cvdeploy export BUNDLE "
        "--format onnx`",
    )


def obfuscate_bundle(
    bundle_path: Path,
    *,
    artifact: str | None = None,
    out_id: str | None = None,
    data: Path | None = None,
    overwrite: bool = False,
) -> ObfuscateReport:
    """Add an obfuscated copy of an ONNX artifact, gated on parity with its source.

    Args:
        bundle_path: The bundle.
        artifact: Source artifact id (default: the first plain fp32 ONNX artifact).
        out_id: New artifact id (default: ``<source>-obf``).
        data: Images for the parity gate (default: the bundle's sample images).
        overwrite: Replace an existing artifact with that id.

    Raises:
        CheckFailed: The obfuscated model's outputs differ (nothing is added).
    """
    import onnx

    bundle = Bundle.load(bundle_path)
    src = _source(bundle, artifact)
    new_id = out_id or f"{src.id}-obf"
    src_file = bundle.model_file(src)  # refuses an encrypted source
    paths = gate_images(data, bundle.sample_images())
    images = [read_image(p) for p in paths]
    try:
        model = onnx.load(str(src_file))
    except Exception as exc:  # onnx raises DecodeError and others
        raise InputError(f"cannot read {src_file.name} as ONNX: {exc}".splitlines()[0]) from exc
    model, counts = obfuscate_model(model)
    details = {"artifact": new_id, "source": src.id, "renamed": counts}
    with bundle.edit(action="obfuscate", details=details) as edit:
        out_dir = edit.artifact_dir(new_id, replace=overwrite)
        dst = out_dir / "model.onnx"
        big = model.ByteSize() > _MAX_PROTO
        onnx.save(model, str(dst), save_as_external_data=big, location="model.onnx.data")
        del model
        onnx.checker.check_model(str(dst))
        parity = run_gate(
            bundle.spec,
            src,
            src_file,
            ("onnx", dst, src.io, new_id, src.runtime_precision),
            images,
            imgsz=None,
            precision=src.precision,
        )
        if not parity.passed:
            raise CheckFailed(
                f"the obfuscated model's outputs differ from {src.id}: "
                + "; ".join(parity.failures),
                hint="nothing was added; report this model (the renaming must not change "
                "the computation)",
            )
        edit.add_artifact(
            artifact_id=new_id,
            format="onnx",
            precision=src.precision,
            io=src.io,
            main_file="model.onnx",
            produced_by=Provenance(tool="obfuscate", source=src.id, options={"renamed": counts}),
            environment=fingerprint(),
            checks=[parity.to_check(source=src.id)],
            inference_precision=src.runtime_precision,
        )
    check = parity.to_check(source=src.id)
    return ObfuscateReport(new_id, src.id, counts, dict(check.data))
