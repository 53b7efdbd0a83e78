"""The deploy stage: one verified bundle, deployed anywhere.

Public API:

- :func:`package_bundle` -> :class:`PackageResult`: a directory a user can use as is, for
  a target of :data:`TARGETS` (docker, kubernetes, triton, sagemaker, vertex, azureml, ray);
- :func:`batch_predict` -> :class:`BatchReport`: offline inference over a folder or a glob
  into JSON lines, resumable, in-process or on Ray Data (:mod:`cvdeploy.deploy.ray`);
- :func:`write_card`, :func:`render_card`, :func:`render_changelog`: ``MODEL_CARD.md`` and
  ``CHANGELOG.md`` from the manifest (:func:`refresh_card` is the bundle hook that keeps
  them current);
- :mod:`cvdeploy.deploy.engine`: the container engine (podman or docker) that builds and
  runs the image.

Optional packages (ray, tritonclient, kubernetes-validate) are imported only by the
functions that need them.
"""

from cvdeploy.deploy.card import (
    CARD_FILE,
    CHANGELOG_FILE,
    refresh_card,
    render_card,
    render_changelog,
    write_card,
    write_notes,
)

__all__ = [
    "CARD_FILE",
    "CHANGELOG_FILE",
    "refresh_card",
    "render_card",
    "render_changelog",
    "write_card",
    "write_notes",
]
