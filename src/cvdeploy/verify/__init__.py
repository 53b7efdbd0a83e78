"""cvdeploy.verify."""
