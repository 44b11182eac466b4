"""berthing's version, at the bottom of the layers: package manifests record it without importing the top package."""

__version__ = "0.1.0"
