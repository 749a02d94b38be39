"""Bundled configuration: taxonomy YAML files and Hydra configs (package data)."""
