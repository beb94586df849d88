"""The package version, in one place: pyproject reads it (``dynamic = ["version"]``)."""

__version__ = "0.1.0"
