"""cvdeploy: from a trained vision model to a verified, fast, secure deployment.

The curated public API, imported lazily (``import cvdeploy`` stays cheap, and no layer below
the stages imports this package)::

    import cvdeploy

    bundle = cvdeploy.Bundle.load("my-detector")
    with cvdeploy.Predictor.from_bundle(bundle) as p:
        results, times = p.predict(images)

Everything else lives in the stage packages (``cvdeploy.export``, ``cvdeploy.optimize``,
``cvdeploy.verify``, ``cvdeploy.bench``, ``cvdeploy.serve``, ``cvdeploy.security``...) and
the workflows (``cvdeploy.workflows``); see the README's "Architecture" section.
"""

from __future__ import annotations

import importlib
from typing import Any

from cvdeploy.version import __version__

_API = {
    "Bundle": "cvdeploy.bundle",
    "ModelSpec": "cvdeploy.spec",
    "CvdeployError": "cvdeploy.errors",
    "Predictor": "cvdeploy.pipeline",
    "Thresholds": "cvdeploy.pipeline",
    "export_model": "cvdeploy.export",
    "import_model": "cvdeploy.export",
    "quantize_bundle": "cvdeploy.optimize",
    "evaluate_bundle": "cvdeploy.verify",
    "check_parity": "cvdeploy.verify",
    "bench_artifact": "cvdeploy.bench",
    "run_sweep": "cvdeploy.bench",
    "tune_bundle": "cvdeploy.workflows",
}


def __getattr__(name: str) -> Any:
    """Resolve a name of the public API on first use."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'cvdeploy' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*_API, "__version__"])


__all__ = ["__version__", *_API]
