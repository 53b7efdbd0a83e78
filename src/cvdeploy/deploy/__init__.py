"""The deploy stage: one verified bundle, deployed anywhere.

Public API:

- :func:`package_bundle` with :class:`PackageOptions` -> :class:`PackageResult`: a directory
  a user can use as is, for a target of :data:`TARGETS` (docker, kubernetes, triton,
  sagemaker, vertex, azureml, ray);
- :func:`batch_predict` with :class:`BatchOptions` -> :class:`BatchReport`: offline
  inference over a folder or a glob into JSON lines, resumable, in-process or on Ray Data;
- :func:`write_card`, :func:`render_card`, :func:`render_changelog`, :func:`write_notes`:
  ``MODEL_CARD.md`` and ``CHANGELOG.md`` from the manifest (:func:`refresh_card` is the
  bundle hook that keeps them current);
- :func:`find_engine` -> :class:`Engine`: the container engine (podman or docker) that
  builds and runs the image.

Optional packages (ray, tritonclient, kubernetes-validate) are imported only by the
functions that need them.
"""

from cvdeploy.deploy.base import TARGETS, PackageOptions, PackageResult, package_bundle
from cvdeploy.deploy.batch import BatchOptions, BatchReport, batch_predict, list_inputs
from cvdeploy.deploy.card import (
    CARD_FILE,
    CHANGELOG_FILE,
    refresh_card,
    render_card,
    render_changelog,
    write_card,
    write_notes,
)
from cvdeploy.deploy.engine import Engine, find_engine

__all__ = [
    "CARD_FILE",
    "CHANGELOG_FILE",
    "TARGETS",
    "BatchOptions",
    "BatchReport",
    "Engine",
    "PackageOptions",
    "PackageResult",
    "batch_predict",
    "find_engine",
    "list_inputs",
    "package_bundle",
    "refresh_card",
    "render_card",
    "render_changelog",
    "write_card",
    "write_notes",
]
