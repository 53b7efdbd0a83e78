"""cvdeploy: from a trained vision model to a verified, fast, secure deployment."""

__version__ = "0.1.0"
