"""Scan input/output: discovery, NIfTI and DICOM readers, geometry-exact writers."""

from .discover import Discovery, ScanRef, Skipped, discover
from .errors import ScanError
from .nifti import read_nifti, write_nifti

__all__ = ["Discovery", "ScanRef", "Skipped", "discover", "ScanError", "read_nifti", "write_nifti"]
