"""cvdeploy.export."""
