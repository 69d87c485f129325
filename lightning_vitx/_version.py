"""The package version (pyproject.toml's; tests/test_layers.py checks that they agree)."""

__version__ = "0.1.0"
