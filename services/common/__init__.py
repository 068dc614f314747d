"""Shared by every Modelyard server: bootstrap, health, reflection, errors, metrics, auth, settings."""
