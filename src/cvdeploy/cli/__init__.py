"""cvdeploy.cli."""
