"""The package version, in a module of its own so subpackages can record it (model.json, run.json,
DICOM outputs) without importing the root package."""

__version__ = "0.1.0"
