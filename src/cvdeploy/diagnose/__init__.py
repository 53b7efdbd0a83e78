"""Diagnosis: environment, preprocessing audit, drift, doctor."""
