"""The workflows run on the bench tests' tiny bundles (same fixtures, no downloads)."""

from tests.bench.conftest import images, tiny_bundle

__all__ = ["images", "tiny_bundle"]
