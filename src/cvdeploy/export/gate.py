"""The export gate: a produced artifact must compute what its source computed, on real images.

:func:`gate_images` picks the images (the user's data, or the bundle's samples);
:func:`gate_reference` names what an artifact is compared with; :func:`run_gate` runs the
candidate beside its reference through :func:`cvdeploy.verify.check_parity` with the
tolerance of the candidate's precision, each at its recorded inference precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvdeploy.bundle import Artifact
from cvdeploy.data import image_paths
from cvdeploy.errors import InputError
from cvdeploy.pipeline import Predictor
from cvdeploy.runtime import create_runner
from cvdeploy.spec import IOSpec, ModelSpec
from cvdeploy.verify import ParityResult, check_parity

GATE_IMAGES = 16


def gate_images(
    data: Path | None, fallback: Sequence[Path], *, limit: int = GATE_IMAGES
) -> list[Path]:
    """Pick real images for the gate: from ``data`` (dataset yaml, COCO json, folder, image;
    see :func:`cvdeploy.data.image_paths`) or ``fallback``, spread over the set."""
    paths = list(fallback) if data is None else image_paths(data, what="--data")
    if not paths:
        raise InputError(
            "no images for the parity gate",
            hint="pass --data with real images (a dataset yaml, a COCO json or a folder)",
        )
    if len(paths) > limit:
        idx = np.linspace(0, len(paths) - 1, limit).round().astype(int)
        paths = [paths[i] for i in idx]
    return paths


def _predictor(
    spec: ModelSpec,
    fmt: str,
    path: Path,
    io: IOSpec,
    imgsz: tuple[int, int] | None,
    artifact_id: str,
    precision: str,
) -> Predictor:
    runner = create_runner(fmt, path, io, inference_precision=precision)
    return Predictor(spec=spec, runner=runner, artifact_id=artifact_id, imgsz=imgsz, batch=1)


def gate_reference(artifacts: Sequence[Artifact], source: Artifact, precision: str) -> Artifact:
    """What an artifact made from ``source`` is gated against: ``source``, or for an INT8
    variant of an INT8 source, the FP32 artifact that source was quantized from."""
    if precision.startswith("int8") and source.precision.startswith("int8"):
        for a in artifacts:
            if a.id == source.produced_by.source and a.precision == "fp32":
                return a
    return source


def run_gate(
    spec: ModelSpec,
    reference: Artifact,
    reference_file: Path,
    candidate: tuple[str, Path, IOSpec, str, str],
    images: Sequence[np.ndarray],
    *,
    imgsz: tuple[int, int] | None,
    precision: str,
) -> ParityResult:
    """Run the candidate beside its reference on ``images`` and compare (see
    :func:`cvdeploy.verify.check_parity`).

    Args:
        spec: The bundle's spec.
        reference: The artifact the candidate is compared with.
        reference_file: Its main file (in the staging directory).
        candidate: ``(format, main file, io, artifact id, inference precision)``.
        images: Real images (BGR uint8).
        imgsz: Input size override (``--imgsz``).
        precision: The candidate's precision (selects the tolerance).
    """
    fmt, path, io, art_id, computes = candidate
    src = _predictor(
        spec,
        reference.format,
        reference_file,
        reference.io,
        imgsz,
        reference.id,
        reference.runtime_precision,
    )
    cand = _predictor(spec, fmt, path, io, imgsz, art_id, computes)
    with src, cand:
        return check_parity(src, cand, images, precision=precision)
