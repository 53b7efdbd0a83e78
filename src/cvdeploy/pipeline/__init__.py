"""cvdeploy.pipeline."""
