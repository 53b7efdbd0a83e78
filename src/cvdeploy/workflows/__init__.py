"""Workflows: recipes that combine several stages, above them in the layering.

- :func:`tune_bundle` with :class:`TuneOptions` -> :class:`TuneReport` (``cvdeploy tune``:
  the fastest artifact and runtime settings within an accuracy floor, made through the
  export and quantize stages, evaluated by verify, timed by bench);
- :func:`deploy_model` -> :class:`DeployReport` (``cvdeploy deploy``: a model file to a
  measured, servable bundle in one command);
- :func:`run_demo` -> :class:`DemoResult` (``cvdeploy demo``: the shipped detector from
  bundle to a measured, reported deployment).
"""

from cvdeploy.workflows.demo import DemoResult, run_demo, serve_instructions
from cvdeploy.workflows.deploy import DeployReport, deploy_model
from cvdeploy.workflows.tune import tune_bundle
from cvdeploy.workflows.tune_report import TuneOptions, TuneReport

__all__ = [
    "DemoResult",
    "DeployReport",
    "TuneOptions",
    "TuneReport",
    "deploy_model",
    "run_demo",
    "serve_instructions",
    "tune_bundle",
]
