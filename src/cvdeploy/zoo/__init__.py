"""cvdeploy.zoo."""
