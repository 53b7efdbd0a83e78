"""The export stage: produce artifacts from a source and pass each through the parity gate.

Targets are registered in :data:`cvdeploy.export.base.EXPORTERS` by format name. Each target
function writes the artifact's files into a staging directory and returns what it produced;
this module then runs the integrity gate (:mod:`cvdeploy.export.gate`) against the source
artifact on real images and adds the artifact only when it passes.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cvdeploy.bundle import Artifact, Bundle, BundleEdit, Provenance
from cvdeploy.data import read_image
from cvdeploy.environment import fingerprint
from cvdeploy.errors import BackendUnavailable, CheckFailed, CvdeployError, InputError, UsageError
from cvdeploy.export.base import (
    EXPORTERS,
    ExportContext,
    ExportOptions,
    ExportOutcome,
    ExportReport,
    TargetFn,
    artifact_id_for,
    check_available,
    parse_targets,
)
from cvdeploy.export.gate import GATE_IMAGES, gate_images, gate_reference, run_gate
from cvdeploy.fsutil import pid_prefix, sweep_stale
from cvdeploy.runtime import RUNTIMES
from cvdeploy.spec import IOSpec, ModelSpec, TensorSpec

SAMPLES_KEPT = 8


def _source_artifact(
    manifest_artifacts: Sequence[Artifact], precision: str = "fp32", target: str = ""
) -> Artifact:
    if precision == "int8-bf16":
        for a in manifest_artifacts:
            if a.format == target and a.precision == "int8":
                return a
        raise UsageError(
            f"{target}:int8-bf16 runs the bundle's {target} INT8 model with bf16 float parts, "
            f"and the bundle has no {target} INT8 artifact",
            hint=f"quantize first (`cvdeploy quantize BUNDLE --calib DATA --backend {target}`)",
        )
    if precision == "int8":
        # TensorRT takes symmetric int8 Q/DQ only: prefer the artifact quantized for it.
        int8 = [a for a in manifest_artifacts if a.format == "onnx" and a.precision == "int8"]
        for a in int8:
            if a.produced_by.options.get("activations") == "int8-symmetric":
                return a
        if int8:
            return int8[0]
        have = ", ".join(f"{a.id}" for a in manifest_artifacts) or "none"
        raise UsageError(
            f"INT8 {target} needs an explicitly quantized (Q/DQ) INT8 ONNX artifact in the "
            f"bundle to build from; it has only: {have}",
            hint="quantize first (`cvdeploy quantize BUNDLE --backend tensorrt`), then export "
            f"{target}:int8",
        )
    for fmt in ("torch", "onnx"):
        for a in manifest_artifacts:
            if a.format == fmt and a.precision == "fp32":
                return a
    for a in manifest_artifacts:
        if a.precision == "fp32":
            return a
    raise UsageError("the bundle has no fp32 artifact to export from")


def _export_one(
    edit: BundleEdit, ctx: ExportContext, fmt: str, *, overwrite: bool
) -> ExportOutcome:
    """Produce one artifact and gate it. Bad usage (UsageError, BackendUnavailable) aborts
    the whole export, so the bundle stays as it was; other failures refuse this artifact."""
    art_id = artifact_id_for(fmt, ctx.options, ctx.precision)
    backup = edit.staging / f".previous-{art_id}"
    if (edit.staging / art_id).exists() and overwrite:
        (edit.staging / art_id).rename(backup)  # restored if the new one fails

    def restore() -> None:
        shutil.rmtree(edit.staging / art_id, ignore_errors=True)
        if backup.exists():
            backup.rename(edit.staging / art_id)

    try:
        target: TargetFn = EXPORTERS.get(fmt)
        out_dir = edit.artifact_dir(art_id, replace=overwrite)
        produced = target(ctx, out_dir)
        if not RUNTIMES.availability(produced.format).available:
            raise UsageError(
                f"the {produced.format} runtime is "
                f"{RUNTIMES.availability(produced.format).reason}: the artifact "
                "cannot be verified here, so it is not added"
            )
        ref = ctx.reference or ctx.source
        parity = run_gate(
            ctx.spec,
            ref,
            edit.path_of(ref.files[0].path),
            (
                produced.format,
                out_dir / produced.main_file,
                produced.io,
                art_id,
                produced.runtime_precision,
            ),
            ctx.images,
            imgsz=ctx.options.imgsz,
            precision=produced.precision,
        )
    except (UsageError, BackendUnavailable):
        restore()
        raise
    except CvdeployError as exc:
        restore()
        return ExportOutcome(art_id, "failed", str(exc))
    except BaseException:
        restore()
        raise
    if not parity.passed:
        restore()
        return ExportOutcome(art_id, "refused", "; ".join(parity.failures), parity)
    shutil.rmtree(backup, ignore_errors=True)
    opts = dataclasses.asdict(ctx.options)
    edit.add_artifact(
        artifact_id=art_id,
        format=produced.format,
        precision=produced.precision,
        io=produced.io,
        main_file=produced.main_file,
        produced_by=Provenance(
            tool=f"export:{fmt}", source=ctx.source.id, options={**opts, **produced.facts}
        ),
        environment=fingerprint(),
        checks=[parity.to_check(source=ref.id)],
        inference_precision=produced.runtime_precision,
    )
    return ExportOutcome(art_id, "added", "", parity)


def _torch_io(spec: ModelSpec, hw: tuple[int, int]) -> IOSpec:
    c = spec.preprocess.channels
    if spec.task == "classify":
        out = TensorSpec(name="output0", shape=(-1, spec.num_classes))
    else:
        out = TensorSpec(name="output0", shape=(-1, 4 + spec.num_classes, -1))
    return IOSpec(inputs=(TensorSpec(name="images", shape=(-1, c, -1, -1)),), outputs=(out,))


def _synthetic_samples(task: str, tmp: Path, n: int) -> list[Path]:
    from cvdeploy.data import synthetic

    if task == "classify":
        root = synthetic.make_classification_dataset(
            tmp / "cls", n_per_class_train=0, n_per_class_val=2, seed=12345
        )
        return sorted((root / "val").rglob("*.png"))[:n]
    yaml_path = synthetic.make_detection_dataset(tmp / "det", n_train=0, n_val=n, seed=12345)
    return sorted((yaml_path.parent / "images" / "val").iterdir())[:n]


def export_model(
    source: str | Path,
    *,
    formats: Sequence[str],
    out: Path | None = None,
    options: ExportOptions | None = None,
    spec_file: Path | None = None,
    data: Path | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Export ``source`` to ``formats``, each through the parity gate.

    Args:
        source: A zoo name, a training checkpoint, ``module:factory`` (with ``spec_file``),
            an existing bundle directory (its best source artifact is exported), or an
            external ``.onnx`` file (imported into ``out`` first, as ``cvdeploy import`` does).
        formats: Target formats (see :data:`EXPORTERS`), each optionally with a precision
            (``openvino:fp16``, ``tensorrt:int8``); without one, ``fp16`` with
            ``options.half``, else ``fp32``.
        out: Bundle directory (required for a new bundle; for a bundle source, another
            directory to write the extended copy to).
        options: Export options.
        spec_file: Spec of a ``module:factory`` source.
        data: Real images for the gate (folder or dataset); default: the bundle's samples,
            or freshly generated synthetic images for zoo models.
        overwrite: Replace existing artifacts (or an existing bundle at ``out``).

    Returns:
        The report; artifacts that failed the gate were not added.
    """
    opts = options or ExportOptions()
    targets = parse_targets(formats, opts)
    if opts.dynamic and opts.batch != 1:
        raise UsageError(
            "--dynamic and --batch N exclude each other",
            hint="--dynamic accepts any batch; --batch N fixes it to N",
        )
    if opts.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {opts.batch}")
    check_available(targets)
    src_path = Path(source)
    if src_path.is_dir() and (src_path / "bundle.json").exists():
        return _export_from_bundle(Bundle.load(src_path), targets, out, opts, data, overwrite)
    if out is None:
        raise UsageError("--out is required when exporting from a model (not a bundle)")
    if src_path.suffix.lower() == ".onnx":
        return _export_from_onnx_file(src_path, targets, out, opts, data, overwrite)
    return _export_from_torch(str(source), targets, out, opts, spec_file, data, overwrite)


def _export_from_onnx_file(
    path: Path,
    targets: list[tuple[str, str]],
    out: Path,
    opts: ExportOptions,
    data: Path | None,
    overwrite: bool,
) -> ExportReport:
    """Import an external ONNX file into ``out`` (its own metadata), then export from it.

    A failed export removes the bundle that the import created, so nothing is left behind.
    """
    from cvdeploy.export.importer import import_model

    if not path.is_file():
        raise InputError(f"{path} does not exist", hint="give an existing .onnx file")
    existed = Path(out).exists()
    if existed and not overwrite:
        raise UsageError(f"{out} exists", hint="pass --overwrite or choose another --out")
    samples = gate_images(data, []) if data is not None else []
    import_model(path, out=out, overwrite=overwrite, samples=samples[:SAMPLES_KEPT])
    try:
        return _export_from_bundle(Bundle.load(out), targets, None, opts, data, overwrite)
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _load_images(paths: Sequence[Path]) -> list[np.ndarray]:
    return [read_image(p) for p in paths]


def create_torch_bundle(
    source: str,
    *,
    out: Path,
    spec_file: Path | None = None,
    data: Path | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Create a bundle holding only the torch source artifact (and sample images).

    Args:
        source: A zoo name, a training checkpoint, or ``module:factory``.
        out: Bundle directory.
        spec_file: Spec of a ``module:factory`` source.
        data: Sample images (folder or dataset); default: generated synthetic images.
        overwrite: Replace an existing bundle at ``out``.
    """
    _export_from_torch(source, [], out, ExportOptions(), spec_file, data, overwrite)
    return Bundle.load(out)


def _export_from_torch(
    source: str,
    targets: list[tuple[str, str]],
    out: Path,
    opts: ExportOptions,
    spec_file: Path | None,
    data: Path | None,
    overwrite: bool,
) -> ExportReport:
    from cvdeploy.export.sources import resolve_torch_source
    from cvdeploy.runtime.torch import save_checkpoint

    ts = resolve_torch_source(source, spec_file=spec_file, imgsz=opts.imgsz)
    spec = ts.spec
    with _temporary("cvdeploy-samples-") as tmp:
        fallback = [] if data is not None else _synthetic_samples(spec.task, Path(tmp), GATE_IMAGES)
        paths = gate_images(data, fallback)
        images = _load_images(paths)
        outcomes: list[ExportOutcome] = []
        with Bundle.create(
            out,
            name=ts.name,
            spec=spec,
            overwrite=overwrite,
            action="export",
            details={"source": source, "formats": [f"{f}:{p}" for f, p in targets]},
        ) as edit:
            d = edit.artifact_dir("torch-fp32")
            save_checkpoint(
                d / "model.pt",
                builder=ts.builder,
                num_classes=ts.num_classes,
                state_dict=ts.module.state_dict(),
            )
            edit.add_artifact(
                artifact_id="torch-fp32",
                format="torch",
                precision="fp32",
                io=_torch_io(spec, spec.imgsz),
                main_file="model.pt",
                produced_by=Provenance(tool="torch", options=ts.facts),
                environment=fingerprint(),
            )
            edit.add_samples(paths[:SAMPLES_KEPT])
            for f, prec in targets:
                src_art = _source_artifact(edit.manifest.artifacts, prec, f)
                ctx = ExportContext(
                    spec=spec,
                    source=src_art,
                    source_file=edit.path_of(src_art.files[0].path),
                    options=opts,
                    images=images,
                    torch_module=ts.module,
                    precision=prec,
                    reference=gate_reference(edit.manifest.artifacts, src_art, prec),
                )
                outcomes.append(_export_one(edit, ctx, f, overwrite=True))
            if targets and not any(o.status == "added" for o in outcomes):
                raise CheckFailed(
                    "no artifact passed: "
                    + "; ".join(f"{o.artifact_id}: {o.message}" for o in outcomes)
                )
    return ExportReport(Path(out), source, outcomes)


def _export_from_bundle(
    bundle: Bundle,
    targets: list[tuple[str, str]],
    out: Path | None,
    opts: ExportOptions,
    data: Path | None,
    overwrite: bool,
) -> ExportReport:
    target = bundle
    notes: list[str] = []
    if out is not None and Path(out).resolve() != bundle.path.resolve():
        if Path(out).exists() and not overwrite:
            raise UsageError(f"{out} exists", hint="pass --overwrite or choose another --out")
        with Bundle.create(
            out,
            name=bundle.name,
            spec=bundle.spec,
            overwrite=overwrite,
            action="copy",
            details={"from": str(bundle.path)},
        ) as edit:
            for a in bundle.manifest.artifacts:
                shutil.copytree(bundle.path / a.id, edit.artifact_dir(a.id), dirs_exist_ok=True)
            edit.manifest = edit.manifest.model_copy(
                update={
                    "artifacts": bundle.manifest.artifacts,
                    "samples": bundle.manifest.samples,
                    "recommended": bundle.manifest.recommended,
                    "history": bundle.manifest.history,
                }
            )
            if bundle.manifest.samples:
                shutil.copytree(bundle.path / "samples", edit.path_of("samples"))
        target = Bundle.load(out)
    clashes = [
        artifact_id_for(f, opts, p)
        for f, p in targets
        if any(a.id == artifact_id_for(f, opts, p) for a in target.manifest.artifacts)
    ]
    if clashes and not overwrite:
        raise UsageError(
            f"artifact(s) {', '.join(clashes)} already exist in {target.path}",
            hint="pass --overwrite to replace them",
        )
    sources = {p: _source_artifact(target.manifest.artifacts, p, f) for f, p in targets}
    src_art = sources[targets[0][1]]
    fallback = target.sample_images()
    if data is None and not fallback and (last := target.last_evaluated_data()) is not None:
        data = last
        notes.append(
            f"no --data and no sample images in the bundle: the gate uses the images of its "
            f"last evaluation ({last})"
        )
    paths = gate_images(data, fallback)
    images = _load_images(paths)
    modules: dict[str, Any] = {}
    for a in sources.values():
        if a.format == "torch" and a.id not in modules:
            from cvdeploy.runtime.torch import load_checkpoint

            modules[a.id], _ = load_checkpoint(target.model_file(a))
    outcomes: list[ExportOutcome] = []
    details = {
        "source": src_art.id,
        "sources": sorted({a.id for a in sources.values()}),
        "formats": [f"{f}:{p}" for f, p in targets],
    }
    with target.edit(action="export", details=details) as edit:
        for f, prec in targets:
            src = sources[prec]
            ctx = ExportContext(
                spec=target.spec,
                source=src,
                source_file=edit.path_of(src.files[0].path),
                options=opts,
                images=images,
                torch_module=modules.get(src.id),
                precision=prec,
                reference=gate_reference(edit.manifest.artifacts, src, prec),
            )
            outcomes.append(_export_one(edit, ctx, f, overwrite=overwrite))
        if not any(o.status == "added" for o in outcomes):
            raise CheckFailed(
                "no artifact passed: "
                + "; ".join(f"{o.artifact_id}: {o.message}" for o in outcomes)
            )
    return ExportReport(target.path, src_art.id, outcomes, notes)


def _temporary(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder named with this process's id; those left by killed processes
    (``kill -9`` gives no chance to clean up) are removed first."""
    sweep_stale(Path(tempfile.gettempdir()), prefix)
    return tempfile.TemporaryDirectory(prefix=pid_prefix(prefix))
