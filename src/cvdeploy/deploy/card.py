"""The model card (``MODEL_CARD.md``) and ``CHANGELOG.md``, generated from the manifest.

Everything in the card is read from ``bundle.json``: the spec (the preprocessing contract),
each artifact's files, precision and checks (parity, mAP with its bootstrap interval,
latency on named hardware), the provenance of optimized artifacts (quantization, pruning,
distillation settings) and the history. Nothing is typed in by hand except the optional
``card.yaml`` beside the manifest (intended use, limitations, licence, authors), which
``cvdeploy card --intended-use ...`` writes.

:func:`refresh_card` is registered as a bundle hook (:data:`cvdeploy.bundle.BUNDLE_HOOKS`):
the core calls it after every successful change, on the staged bundle, so the card always
describes the manifest it sits beside.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cvdeploy.bundle import MANIFEST, Artifact, Bundle, Check, Manifest
from cvdeploy.errors import InputError
from cvdeploy.fsutil import write_atomic

__all__ = [
    "CARD_FILE",
    "CHANGELOG_FILE",
    "NOTES_FILE",
    "CardFiles",
    "read_notes",
    "refresh_card",
    "render_card",
    "render_changelog",
    "write_card",
    "write_notes",
]

CARD_FILE = "MODEL_CARD.md"
CHANGELOG_FILE = "CHANGELOG.md"
NOTES_FILE = "card.yaml"
"""Hand-written card fields (``intended_use``, ``limitations``, ``license``, ``authors``)."""
NOTE_KEYS = ("intended_use", "limitations", "license", "authors")

_TASKS = {
    "detect": ("object-detection", "Object Detection"),
    "classify": ("image-classification", "Image Classification"),
}
_OPTIMIZE_ACTIONS = ("quantize", "prune", "distill", "qat", "compress")


@dataclass(frozen=True, slots=True)
class CardFiles:
    """What :func:`write_card` wrote."""

    card: Path
    changelog: Path


# --- notes ----------------------------------------------------------------------------------
def read_notes(directory: Path) -> dict[str, str]:
    """The hand-written fields of ``card.yaml`` (missing file: none).

    Raises:
        InputError: The file is not a YAML mapping of text fields.
    """
    p = Path(directory) / NOTES_FILE
    if not p.is_file():
        return {}
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{p} cannot be read as YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{p} must be a mapping of {', '.join(NOTE_KEYS)}")
    unknown = sorted(set(data) - set(NOTE_KEYS))
    if unknown:
        raise InputError(
            f"{p} has unknown keys {unknown}", hint=f"the keys are {', '.join(NOTE_KEYS)}"
        )
    return {k: str(v).strip() for k, v in data.items() if v is not None}


def write_notes(directory: Path, **fields: str | None) -> dict[str, str]:
    """Merge ``fields`` (``None`` left as they are) into ``card.yaml``; returns the result."""
    notes = read_notes(directory)
    notes.update({k: v for k, v in fields.items() if v is not None})
    text = yaml.safe_dump(notes, sort_keys=False, allow_unicode=True)
    write_atomic(Path(directory) / NOTES_FILE, text.encode("utf-8"))
    return notes


# --- rendering ------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    head = list(header)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _latest_by_name(art: Artifact, kind: str) -> list[Check]:
    latest: dict[str, Check] = {}
    for c in art.checks:
        if c.kind == kind:
            latest[c.name] = c
    return list(latest.values())


def _headline(metrics: Mapping[str, Any]) -> tuple[str, float | None, str, float | None]:
    if "map50_95" in metrics:
        return "mAP50-95", metrics.get("map50_95"), "mAP50", metrics.get("map50")
    return "top-1", metrics.get("top1"), "top-5", metrics.get("top5")


def _ci(metrics: Mapping[str, Any], key: str) -> str:
    pair = _mapping(metrics.get("ci")).get(key)
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        return "not recorded (re-run `cvdeploy eval`)"
    return f"[{pair[0]:.4f}, {pair[1]:.4f}]"


def _mapping(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _hardware(data: Mapping[str, Any]) -> str:
    env = _mapping(data.get("environment"))
    raw_cpu = env.get("cpu")
    cpu = _mapping(raw_cpu)
    gpus = env.get("gpus") if isinstance(env.get("gpus"), list) else []
    model = cpu.get("model") or (raw_cpu if isinstance(raw_cpu, str) else None)
    parts = [str(model or "unknown CPU")]
    if cpu.get("logical_cores"):
        parts.append(f"{cpu['logical_cores']} logical cores")
    if gpus:
        parts.append(
            ", ".join(str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in gpus)
        )
    return ", ".join(parts)


def _model_index(manifest: Manifest) -> list[dict[str, Any]]:
    task_type, task_name = _TASKS[manifest.spec.task]
    results = []
    for art in manifest.artifacts:
        for check in _latest_by_name(art, "metrics"):
            m = _mapping(check.data.get("metrics"))
            k1, v1, k2, v2 = _headline(m)
            metrics = [
                {"type": k, "value": round(float(v), 4), "name": f"{k} ({art.id})"}
                for k, v in ((k1, v1), (k2, v2))
                if isinstance(v, int | float)
            ]
            if not metrics:
                continue
            dataset, _, split = check.name.partition(":")
            results.append(
                {
                    "task": {"type": task_type, "name": task_name},
                    "dataset": {"name": dataset, "type": dataset, "split": split or "val"},
                    "metrics": metrics,
                }
            )
    return [{"name": manifest.name, "results": results}]


def _front_matter(manifest: Manifest, notes: Mapping[str, str]) -> list[str]:
    task_type, _ = _TASKS[manifest.spec.task]
    formats = sorted({a.format for a in manifest.artifacts})
    meta: dict[str, Any] = {
        "library_name": "cvdeploy",
        "pipeline_tag": task_type,
        "tags": ["cvdeploy", task_type, *formats],
    }
    if notes.get("license"):
        meta["license"] = notes["license"]
    meta["model-index"] = _model_index(manifest)
    return ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---"]


def _signature_line(signature: Mapping[str, Any] | None) -> str:
    if not signature or not signature.get("signed"):
        return "unsigned"
    who = f"key {signature.get('key_id')}, {signature.get('signed_at')}"
    if signature.get("verified") is True:
        return f"signature valid ({who})"
    if signature.get("verified") is False:
        return "signature INVALID: " + "; ".join(signature.get("problems") or [])
    if not signature.get("current"):
        return f"signed ({who}) but the manifest changed since: sign again"
    return f"signed ({who}); verify with `cvdeploy verify --public-key`"


def _preprocess(manifest: Manifest) -> list[str]:
    spec = manifest.spec
    pp = spec.preprocess
    rows = [
        ("input size (h x w)", f"{spec.imgsz[0]} x {spec.imgsz[1]}"),
        ("resize", f"{pp.resize}, aligned {pp.align}, pad value {pp.pad_value}"),
        ("colour order", pp.color.upper()),
        ("scale", f"{pp.scale:.6g} (pixel values multiplied by it)"),
        ("mean / std", f"{list(pp.mean)} / {list(pp.std)} (after scaling)"),
        ("decoder", spec.decoder.kind),
    ]
    if spec.task == "detect":
        d = spec.decoder
        rows += [
            ("strides", ", ".join(str(s) for s in d.strides)),
            ("default thresholds", f"conf {d.conf}, NMS IoU {d.iou}, at most {d.max_det}"),
            ("NMS", "class-agnostic" if d.agnostic else "per class (greedy)"),
        ]
    return _table(("", "value"), rows)


def _artifacts(manifest: Manifest, signature: str) -> list[str]:
    rows = []
    for a in manifest.artifacts:
        main = a.files[0]
        parity = a.latest("parity")
        rows.append(
            (
                f"`{a.id}`",
                a.format,
                a.precision,
                a.runtime_precision,
                f"{a.size_bytes / 1e6:.2f}",
                f"`{main.sha256[:16]}…`",
                "-" if parity is None else ("pass" if parity.passed else "FAIL"),
                "yes" if a.encryption is not None else "no",
            )
        )
    lines = _table(
        ("artifact", "format", "precision", "computes in", "MB", "sha256", "parity", "encrypted"),
        rows,
    )
    lines += ["", f"Signature: {signature}. Every file's full sha256 is in `{MANIFEST}`."]
    return lines


def _accuracy(manifest: Manifest) -> list[str]:
    rows = []
    for a in manifest.artifacts:
        for c in _latest_by_name(a, "metrics"):
            m = _mapping(c.data.get("metrics"))
            k1, v1, k2, v2 = _headline(m)
            key1 = "map50_95" if k1 == "mAP50-95" else "top1"
            rows.append(
                (
                    f"`{a.id}`",
                    c.name,
                    c.data.get("images", "-"),
                    f"{k1} {_fmt(v1)}",
                    _ci(m, key1),
                    f"{k2} {_fmt(v2)}",
                    c.data.get("inference_precision") or a.runtime_precision,
                    c.created.date().isoformat(),
                )
            )
    if not rows:
        return ["Not evaluated yet: run `cvdeploy eval BUNDLE --data DATA`."]
    return [
        *_table(
            (
                "artifact",
                "dataset",
                "images",
                "metric",
                "95% CI (bootstrap)",
                "",
                "computed in",
                "measured",
            ),
            rows,
        ),
        "",
        "The interval is a percentile bootstrap over the evaluated images: how much the "
        "figure would move on another sample of the same size from the same distribution.",
    ]


def _latency(manifest: Manifest) -> list[str]:
    rows = []
    for a in manifest.artifacts:
        for c in _latest_by_name(a, "latency"):
            d = c.data
            e2e = _mapping(d.get("e2e_ms"))
            rows.append(
                (
                    f"`{a.id}`",
                    _hardware(d),
                    d.get("batch", "-"),
                    d.get("threads") or "default",
                    _fmt(e2e.get("p50"), 2),
                    _fmt(e2e.get("p90"), 2),
                    _fmt(d.get("throughput_ips"), 1),
                    d.get("inference_precision") or a.runtime_precision,
                    c.created.date().isoformat(),
                )
            )
    if not rows:
        return ["Not benchmarked yet: run `cvdeploy bench BUNDLE`."]
    return _table(
        (
            "artifact",
            "hardware",
            "batch",
            "threads",
            "p50 ms",
            "p90 ms",
            "images/s",
            "computed in",
            "measured",
        ),
        rows,
    )


def _optimization(manifest: Manifest) -> list[str]:
    lines = []
    for a in manifest.artifacts:
        prov = a.produced_by
        if prov.source is None and not prov.options:
            continue
        opts = ", ".join(f"{k}={v}" for k, v in sorted(prov.options.items())) or "defaults"
        src = f" from `{prov.source}`" if prov.source else ""
        lines.append(f"- `{a.id}`: {prov.tool}{src}; {opts}")
    for h in manifest.history:
        if h.action in _OPTIMIZE_ACTIONS:
            det = ", ".join(f"{k}={v}" for k, v in h.details.items())
            lines.append(f"- {h.time.date().isoformat()} {h.action}: {det}")
    return lines or ["No quantized, pruned or distilled artifact."]


def _drift(manifest: Manifest) -> list[str]:
    """The drift reference, when a stage has recorded one (``cvdeploy doctor``)."""
    found = []
    for a in manifest.artifacts:
        for c in a.checks:
            if "drift" in str(c.kind) or "drift" in c.name:
                found.append(
                    f"- `{a.id}` {c.name}: " + ", ".join(f"{k}={v}" for k, v in c.data.items())
                )
    for h in manifest.history:
        if "drift" in h.action:
            found.append(f"- {h.time.date().isoformat()} {h.action}: {h.details}")
    return found or ["No drift reference recorded (`cvdeploy doctor` records one)."]


def _history(manifest: Manifest) -> list[str]:
    rows = [
        (
            h.time.isoformat(),
            h.action,
            h.version,
            ", ".join(f"{k}={v}" for k, v in h.details.items() if not isinstance(v, dict | list))[
                :160
            ],
        )
        for h in manifest.history
    ]
    return _table(("time (UTC)", "action", "cvdeploy", "details"), rows)


def render_card(
    manifest: Manifest,
    *,
    notes: Mapping[str, str] | None = None,
    signature: Mapping[str, Any] | None = None,
) -> str:
    """The model card of a manifest, as Markdown with Hugging Face-style YAML metadata.

    Args:
        manifest: The bundle's manifest.
        notes: Hand-written fields (``intended_use``, ``limitations``, ``license``, ``authors``).
        signature: What :func:`cvdeploy.security.signature_status` says (``None``: unsigned).
    """
    notes = dict(notes or {})
    spec = manifest.spec
    names = ", ".join(spec.names[:40]) + (
        f" … ({len(spec.names)} in all)" if len(spec.names) > 40 else ""
    )
    what = "detects objects of" if spec.task == "detect" else "classifies images into"
    rec = manifest.recommended
    datasets = sorted({c.name for a in manifest.artifacts for c in a.checks if c.kind == "metrics"})
    lines = [
        *_front_matter(manifest, notes),
        "",
        f"# {manifest.name}",
        "",
        "<!-- Generated by cvdeploy from bundle.json; refreshed by every change to the bundle. "
        f"Hand-written fields live in {NOTES_FILE} (`cvdeploy card --intended-use ...`). -->",
        "",
        f"A {'detector' if spec.task == 'detect' else 'classifier'} that {what} "
        f"{len(spec.names)} classes: {names}.",
    ]
    if notes.get("authors"):
        lines += ["", f"Authors: {notes['authors']}."]
    if rec is not None:
        lines += [
            "",
            f"Recommended artifact: `{rec.artifact}` (chosen by `cvdeploy {rec.source}` for "
            f"{rec.target}; threads {rec.options.threads or 'default'}).",
        ]
    lines += ["", "## Intended use", ""]
    lines.append(
        notes.get("intended_use")
        or f"{what.capitalize()} the classes above in images like those it was evaluated on "
        f"({', '.join(datasets) or 'no evaluation recorded yet'}). "
        f"Describe the intended use in {NOTES_FILE} (`cvdeploy card --intended-use TEXT`)."
    )
    lines += ["", "## Limitations", ""]
    if notes.get("limitations"):
        lines += [notes["limitations"], ""]
    lines += [
        "- Accuracy is known only on the datasets listed below, within the confidence "
        "intervals given; other cameras, scenes or class definitions need their own evaluation.",
        "- Each artifact computes in the precision listed; another runtime version or CPU "
        "kind may round differently (`cvdeploy env --compare BUNDLE` lists what differs).",
        "- Inputs must follow the preprocessing contract below; cvdeploy's own predictor, "
        "server and clients apply it.",
        "",
        "## Preprocessing contract",
        "",
        *_preprocess(manifest),
        "",
        "## Artifacts",
        "",
        *_artifacts(manifest, _signature_line(signature)),
        "",
        "## Accuracy",
        "",
        *_accuracy(manifest),
        "",
        "## Latency",
        "",
        *_latency(manifest),
        "",
        "## Quantization, pruning and distillation",
        "",
        *_optimization(manifest),
        "",
        "## Drift reference",
        "",
        *_drift(manifest),
        "",
        "## Change history",
        "",
        *_history(manifest),
        "",
    ]
    return "\n".join(lines)


def render_changelog(manifest: Manifest) -> str:
    """``CHANGELOG.md``: the manifest history, newest first, grouped by day."""
    lines = [
        f"# Changelog of {manifest.name}",
        "",
        f"Derived from the history in {MANIFEST} (append-only); newest first.",
    ]
    day = None
    for h in reversed(manifest.history):
        d = h.time.date().isoformat()
        if d != day:
            lines += ["", f"## {d}", ""]
            day = d
        det = ", ".join(f"{k}: {v}" for k, v in h.details.items() if not isinstance(v, dict | list))
        lines.append(
            f"- {h.time.strftime('%H:%M:%S')} **{h.action}**"
            + (f" ({det[:200]})" if det else "")
            + f" (cvdeploy {h.version})"
        )
    return "\n".join(lines) + "\n"


# --- writing --------------------------------------------------------------------------------
def _signature(directory: Path, public_key: Path | None) -> dict[str, Any] | None:
    from cvdeploy.security import signature_status

    return signature_status(directory, public_key)


def _replace(path: Path, text: str) -> None:
    """Write a new file (never through a hard link to the previous bundle's copy)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    write_atomic(path, text.encode("utf-8"))


def refresh_card(directory: Path, manifest: Manifest) -> None:
    """The bundle hook: (re)write ``MODEL_CARD.md`` and ``CHANGELOG.md`` in ``directory``.

    On failure the stale files are removed (a card never describes another manifest) and
    the error is raised for the core to report.
    """
    d = Path(directory)
    try:
        card = render_card(manifest, notes=read_notes(d), signature=_signature(d, None))
        changelog = render_changelog(manifest)
    except Exception:
        for name in (CARD_FILE, CHANGELOG_FILE):
            with contextlib.suppress(FileNotFoundError):
                (d / name).unlink()
        raise
    _replace(d / CARD_FILE, card)
    _replace(d / CHANGELOG_FILE, changelog)


def write_card(
    bundle: Bundle | Path | str,
    *,
    out: Path | None = None,
    public_key: Path | None = None,
) -> CardFiles:
    """Write the model card and changelog (``cvdeploy card``).

    Args:
        bundle: The bundle (its files are verified when given as a path).
        out: Directory to write them to (default: the bundle directory).
        public_key: Verify the signature with this Ed25519 key and say so in the card.

    Returns:
        The paths written.
    """
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    dest = Path(out) if out is not None else b.path
    dest.mkdir(parents=True, exist_ok=True)
    card = render_card(
        b.manifest, notes=read_notes(b.path), signature=_signature(b.path, public_key)
    )
    _replace(dest / CARD_FILE, card)
    _replace(dest / CHANGELOG_FILE, render_changelog(b.manifest))
    return CardFiles(card=dest / CARD_FILE, changelog=dest / CHANGELOG_FILE)
