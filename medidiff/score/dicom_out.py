"""DICOM outputs for DICOM input: a binary Segmentation of the calibrated mask and
a Parametric Map of the anomaly map, both referencing the source series so PACS
viewers overlay them on the original images."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path
from ..version import __version__
from ..volume import Volume

MANUFACTURER = "medidiff"


# Type 2 attributes highdicom copies from the source; many real exports omit them.
_TYPE2_DEFAULTS = {"PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "",
                   "StudyDate": "", "StudyTime": "", "ReferringPhysicianName": "", "AccessionNumber": "",
                   "StudyID": ""}


def _source_datasets(volume: Volume):
    import pydicom

    # provenance.source_paths are sorted along the slice normal: slice k <-> path k.
    datasets = [pydicom.dcmread(p) for p in volume.provenance.source_paths]
    for ds in datasets:
        for key, value in _TYPE2_DEFAULTS.items():
            if key not in ds:
                setattr(ds, key, value)
    return datasets


def _frames(array_ijk: np.ndarray) -> np.ndarray:
    """medidiff (i=column, j=row, k=slice) → DICOM frames (slice, row, column)."""
    return np.ascontiguousarray(np.transpose(array_ijk, (2, 1, 0)))


def _series_number(sources) -> int:
    try:
        return int(sources[0].SeriesNumber) + 1000
    except (AttributeError, TypeError, ValueError):
        return 1000


def _derived_series(sources, model_hash: str, offset: int) -> dict:
    """Identity of a new derived series (fresh UIDs; the device is the model)."""
    import highdicom as hd

    return dict(series_instance_uid=hd.UID(), series_number=_series_number(sources) + offset,
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
                manufacturer_model_name="medidiff", software_versions=__version__,
                device_serial_number=model_hash[:16])


@contextlib.contextmanager
def _source_person_names_as_they_are():
    """Derived objects copy the source's PatientName; scanners and anonymisers often write
    single-component names ("HFS"), which highdicom warns about on every scan. The value is
    the source's own and is copied unchanged, so that one warning is pure noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


def write_segmentation(volume: Volume, mask: np.ndarray, path: Path, model_hash: str) -> Path:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = _source_datasets(volume)
    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="anomaly",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="medidiff diffusion anomaly detection", family=codes.cid7162.ArtificialIntelligence,
            version=f"{__version__}+{model_hash[:12]}"),
    )
    with _source_person_names_as_they_are():
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=_frames(mask.astype(np.uint8)),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[desc],
            **_derived_series(sources, model_hash, offset=0),
            series_description="medidiff anomaly mask",
            omit_empty_frames=False,
        )
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return path


def write_parametric_map(volume: Volume, amap: np.ndarray, path: Path, model_hash: str) -> Path:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = _source_datasets(volume)
    hi = float(np.max(amap)) if amap.size else 1.0
    hi = hi if hi > 0 else 1.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="anomaly",
        lut_explanation="medidiff anomaly score (healthy-normalized residual)",
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, hi),
        slope=1.0,
        intercept=0.0,
    )
    with _source_person_names_as_they_are():
        pm = hd.pm.ParametricMap(
            source_images=sources,
            pixel_array=_frames(amap.astype(np.float32)),
            **_derived_series(sources, model_hash, offset=1),
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=hi / 2, window_width=hi)],
            series_description="medidiff anomaly map",
        )
    with atomic_path(path, suffix=".dcm") as tmp:
        pm.save_as(tmp)
    return path
