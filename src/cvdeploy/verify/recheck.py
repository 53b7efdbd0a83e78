"""Re-checking a recorded artifact before it serves again (``cvdeploy registry rollback``).

The parity gate ran when the artifact was made, in that environment; a rollback puts an
older version back into service in this one (another runtime version, another CPU). The
served artifact is run again beside its source on the bundle's sample images, with the
tolerance recorded by its gate; an artifact without a source in the bundle (imported) is
loaded and run once, which at least proves it still loads and runs here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvdeploy.bundle import Bundle
from cvdeploy.data.io import read_image
from cvdeploy.pipeline.predictor import Predictor, select_artifact
from cvdeploy.verify.parity import Tolerance, check_parity

__all__ = ["Recheck", "recheck_parity"]


@dataclass(slots=True)
class Recheck:
    """The outcome of :func:`recheck_parity`.

    Attributes:
        artifact: The artifact checked.
        source: Its source artifact (``None``: it has none in the bundle).
        passed: Parity held (or, without a source, the artifact loaded and ran).
        how: ``parity`` (against its source) or ``ran`` (loaded and run once).
        images: Images used.
        failures: What diverged.
    """

    artifact: str
    source: str | None
    passed: bool
    how: str
    images: int
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def _recorded_tolerance(bundle: Bundle, art_id: str, source: str) -> Tolerance | None:
    """The tolerance the artifact's gate used (recorded with its parity check), if any."""
    check = bundle.artifact(art_id).latest("parity", source)
    tol = check.data.get("tolerance") if check is not None else None
    if not isinstance(tol, dict):
        return None
    values: dict[str, float | None] = {}
    for f in dataclasses.fields(Tolerance):
        if f.name not in tol:  # a field newer than the record: what the gate then used
            if f.default is dataclasses.MISSING:
                return None
            values[f.name] = f.default  # type: ignore[assignment]
            continue
        v = tol.get(f.name)
        if v is None or v == "inf":  # recorded as null / "inf" when unbounded
            values[f.name] = None if f.name == "cosine_all_min" else float("inf")
        else:
            try:
                values[f.name] = float(v)
            except (TypeError, ValueError):
                return None
    return Tolerance(**values)  # type: ignore[arg-type]


def _gate_precision(precision: str) -> str:
    """The tolerance family of an artifact precision."""
    if precision.startswith("int8"):
        return "int8"
    return precision if precision in ("fp16", "bf16") else "fp32"


def recheck_parity(bundle: Bundle, artifact: str | None = None) -> Recheck:
    """Run the served artifact beside its source again (see the module docstring).

    Args:
        bundle: The bundle (loaded with a key loader when it is encrypted).
        artifact: The artifact (default: the one a server would serve).
    """
    art = select_artifact(bundle, artifact)
    images = [read_image(p) for p in bundle.sample_images()]
    source = art.produced_by.source
    known = {a.id for a in bundle.manifest.artifacts}
    if source is None or source not in known or not images:
        probe = images[:1] or [np.full((*bundle.spec.imgsz, 3), 114, np.uint8)]
        with Predictor.from_bundle(bundle, art.id, batch=1) as p:
            p.run_batch(probe)
        return Recheck(art.id, None, True, "ran", len(probe))
    src = Predictor.from_bundle(bundle, source, batch=1)
    cand = Predictor.from_bundle(bundle, art.id, batch=1)
    with src, cand:
        res = check_parity(
            src,
            cand,
            images,
            precision=_gate_precision(art.precision),
            tolerance=_recorded_tolerance(bundle, art.id, source),
        )
    return Recheck(art.id, source, res.passed, "parity", res.images, list(res.failures))
