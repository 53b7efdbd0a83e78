"""Environment and integrity checks of doctor.

- **Environment**: what differs between this machine and the one each artifact was made,
  evaluated and timed on (:func:`cvdeploy.environment.compare`), including native bf16/FP16
  arithmetic and how the artifact's precision is pinned
  (:func:`cvdeploy.precision.precision_differences`).
- **Integrity**: every file's size and sha256 against the manifest (all of them, not only
  the first that differs), and the parity gate re-run on the user's images.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from cvdeploy.bundle import MANIFEST, Artifact, Bundle, sha256_file
from cvdeploy.diagnose.findings import Finding
from cvdeploy.environment import Difference, compare, fingerprint, recorded_environment
from cvdeploy.errors import CvdeployError
from cvdeploy.pipeline import Predictor
from cvdeploy.precision import precision_differences

_NUMERIC = "numerics and speed"


def environment_findings(bundle: Bundle) -> tuple[list[Finding], dict[str, Any]]:
    """Differences from where each artifact was made and measured (one finding per
    artifact that differs in something that changes its numbers)."""
    current = fingerprint()
    findings: list[Finding] = []
    table: dict[str, list[dict[str, str]]] = {}
    for art in bundle.manifest.artifacts:
        diffs: dict[str, tuple[str, Difference]] = {}
        records: list[tuple[str, dict[str, Any]]] = []
        if art.environment:
            records.append(("made", dict(art.environment)))
        for c in art.checks:
            env = recorded_environment(c.data)
            if env:
                records.append((f"{c.kind} {c.name}", env))
        for what, rec in records:
            for d in [
                *compare(current, rec),
                *precision_differences(
                    current, rec, fmt=art.format, inference_precision=art.runtime_precision
                ),
            ]:
                diffs.setdefault(d.field, (what, d))
        rows = [
            {
                "field": d.field,
                "recorded": d.recorded,
                "current": d.current,
                "affects": d.affects,
                "note": d.note,
                "since": what,
            }
            for what, d in diffs.values()
        ]
        table[art.id] = rows
        numeric = [(w, d) for w, d in diffs.values() if d.affects == _NUMERIC]
        if not numeric:
            continue
        isa = any(d.field in ("cpu.flags", "native bf16", "native FP16") for _, d in numeric)
        evidence = [
            f"{d.field}: {d.recorded} -> {d.current} (since {w}){': ' + d.note if d.note else ''}"
            for w, d in numeric
        ]
        findings.append(
            Finding(
                kind="environment",
                severity="warning",
                title=f"{art.id} runs here in another environment than it was "
                + (
                    "made and measured in (instruction set and library versions)"
                    if isa
                    else "made and measured in"
                )
                + f": {len(numeric)} difference(s) that can change its numbers",
                evidence=evidence,
                fix=f"re-measure it here: `cvdeploy eval BUNDLE --data DATA --artifact {art.id}` "
                "(the controlled-dataset table of this report is measured here); pin the "
                "runtime versions it was validated with where they differ",
                artifact=art.id,
                data={"differences": rows},
            )
        )
    return findings, {"current": current, "artifacts": table}


def file_findings(bundle: Bundle) -> tuple[list[Finding], dict[str, Any]]:
    """Every listed file (artifacts, samples, drift references) checked against the
    manifest; one critical finding per file that is missing or altered."""
    findings: list[Finding] = []
    checked = 0
    refs: list[tuple[str, str, str, int | None]] = []
    for a in bundle.manifest.artifacts:
        refs.extend((a.id, f.path, f.sha256, f.size) for f in a.files)
        # a reference recorded again under the same name replaces the file: the newest
        # check of each file is the one that describes it
        newest: dict[str, tuple[str, str, str, int | None]] = {}
        for c in a.checks:
            if c.kind == "reference" and c.data.get("file"):
                rel = str(c.data["file"])
                newest[rel] = (a.id, rel, str(c.data.get("sha256")), c.data.get("size"))
        refs.extend(newest.values())
    refs.extend(("samples", s.path, s.sha256, s.size) for s in bundle.manifest.samples)
    bad: list[dict[str, str]] = []
    for owner, rel, sha, size in refs:
        checked += 1
        f = bundle.path / rel
        if not f.is_file():
            problem = "missing"
        elif (size is not None and f.stat().st_size != size) or sha256_file(f) != sha:
            problem = "altered (sha256 differs from bundle.json)"
        else:
            continue
        bad.append({"owner": owner, "file": rel, "problem": problem})
        findings.append(
            Finding(
                kind="integrity",
                severity="critical",
                title=f"bundle file {rel} ({owner}) is {problem.split(' ')[0]}",
                evidence=[f"{rel}: {problem}; {MANIFEST} records sha256 {sha[:16]}..."],
                fix="restore the file from the released bundle (or re-create the artifact); "
                "never edit bundle files by hand",
                artifact=owner if owner != "samples" else None,
            )
        )
    return findings, {"files_checked": checked, "problems": bad}


def parity_findings(
    bundle: Bundle,
    images: Sequence[np.ndarray],
    *,
    skip: Sequence[str] = (),
    threads: int | None = None,
) -> tuple[list[Finding], list[dict[str, Any]]]:
    """The parity gate re-run on ``images`` for every artifact that recorded one, with the
    tolerance it was gated with."""
    from cvdeploy.runtime import RunnerOptions
    from cvdeploy.verify import Tolerance, check_parity, tolerance_for

    findings: list[Finding] = []
    rows: list[dict[str, Any]] = []
    ids = {a.id for a in bundle.manifest.artifacts}
    opts = RunnerOptions(threads=threads) if threads else None
    for art in bundle.manifest.artifacts:
        check = art.latest("parity")
        if check is None or art.id in skip:
            continue
        src_id = str(check.data.get("source") or check.name)
        if src_id not in ids or src_id in skip:
            continue
        tol = tolerance_for(art.precision)
        rec = check.data.get("tolerance")
        if isinstance(rec, dict):
            fields = {f.name for f in dataclasses.fields(Tolerance)}
            vals = {
                k: float(v) if v is not None else None
                for k, v in rec.items()
                if k in fields and (v is None or isinstance(v, int | float | str))
            }
            with contextlib.suppress(TypeError, ValueError):
                tol = Tolerance(**vals)  # type: ignore[arg-type]
        row: dict[str, Any] = {"artifact": art.id, "source": src_id, "gated": check.passed}
        try:
            with (
                Predictor.from_bundle(bundle, src_id, batch=1, options=opts) as sp,
                Predictor.from_bundle(bundle, art.id, batch=1, options=opts) as cp,
            ):
                res = check_parity(sp, cp, images, precision=art.precision, tolerance=tol)
        except CvdeployError as exc:
            row.update(status="skipped", reason=exc.message)
            rows.append(row)
            continue
        row.update(
            status="passed" if res.passed else "failed",
            images=res.images,
            cosine=[
                o.cosine_scoring if o.cosine_scoring is not None else o.cosine for o in res.outputs
            ],
            match_fraction=res.match_fraction,
            failures=res.failures,
            recorded_cosine=[
                o.get("cosine_scoring") or o.get("cosine")
                for o in (check.data.get("outputs") or [])
            ],
            recorded_match=check.data.get("match_fraction"),
        )
        rows.append(row)
        if res.passed:
            continue
        findings.append(
            Finding(
                kind="integrity",
                severity="critical",
                title=f"{art.id} no longer agrees with {src_id} on your images: the parity gate "
                "it passed when it was made fails here",
                evidence=[
                    *res.failures,
                    f"recorded at export: match {check.data.get('match_fraction')}, "
                    f"here: {res.match_fraction:.1%} of detections agree on {res.images} images",
                ],
                fix="see the environment findings (a runtime or CPU difference changes its "
                f"numbers); re-export it here (`cvdeploy export BUNDLE --format {art.format}`), "
                "or serve the source artifact",
                artifact=art.id,
                impact=None,
                data=row,
            )
        )
    return findings, rows


def artifact_runnable(art: Artifact) -> bool:
    """Whether a runtime for the artifact's format is installed here."""
    from cvdeploy.runtime import RUNTIMES

    if art.format not in RUNTIMES.names():
        return False
    return bool(RUNTIMES.availability(art.format).available)
