"""The front end keeps nothing between calls unless asked to (an opt-in memo bounded in bytes), and
computes the same bits every time in any process (registration on one ITK thread)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import medidiff.frontend.run as fr
from medidiff.frontend import FrontEndConfig, frontend_memo, run_frontend
from medidiff.io.nifti import read_nifti
from medidiff.score.cache import first_pass_cache
from medidiff.volume import Provenance, Volume

ROOT = Path(__file__).resolve().parents[2]


def _fake(monkeypatch, mb_each: float):
    calls = []

    def fake(volume, cfg, modality, template):
        calls.append(volume.scan_id)
        n = int(mb_each * 2**20)
        return fr.FrontEndResult(brain_source=np.zeros(n, bool), template_to_scan=np.eye(4), work_affine=np.eye(4),
                                 log_bias=None)

    monkeypatch.setattr(fr, "_run_frontend", fake)
    return calls


def _vol(i: int) -> Volume:
    return Volume(np.full((4, 4, 4), float(i), np.float32), np.eye(4), Provenance(scan_id=f"s{i}"))


def test_no_memo_by_default(monkeypatch):
    """It was always on (256 entries, ~15 MB each at 1 mm): gigabytes per process, and timings of a memo."""
    calls = _fake(monkeypatch, 0.01)
    for _ in range(3):
        run_frontend(_vol(0), FrontEndConfig())
    assert calls == ["s0"] * 3
    assert fr.active_memo() is None and not hasattr(fr, "_CACHE")


def test_memo_reuses_and_is_bounded_in_bytes(monkeypatch):
    calls = _fake(monkeypatch, 1.0)  # ~1 MB per result
    with frontend_memo(max_bytes=int(2.5 * 2**20)) as memo:
        for i in (0, 1, 0, 1):
            run_frontend(_vol(i), FrontEndConfig())
        assert calls == ["s0", "s1"] and memo.hits == 2
        run_frontend(_vol(2), FrontEndConfig())  # a third does not fit: the least recently used goes
        assert len(memo) == 2 and memo.bytes <= memo.max_bytes
        run_frontend(_vol(0), FrontEndConfig())
        assert calls == ["s0", "s1", "s2", "s0"]
        with frontend_memo() as inner:  # nested blocks share the outer memo
            assert inner is memo
    assert fr.active_memo() is None
    calls.clear()
    with frontend_memo(max_bytes=2**19):  # a result larger than the budget is never kept
        run_frontend(_vol(0), FrontEndConfig())
        run_frontend(_vol(0), FrontEndConfig())
    assert calls == ["s0", "s0"]


def test_settings_searches_get_the_memo(monkeypatch):
    monkeypatch.setenv("MEDIDIFF_FRONTEND_MEMO_MB", "3")
    _fake(monkeypatch, 1.0)
    with first_pass_cache():
        memo = fr.active_memo()
        assert memo is not None and memo.max_bytes == 3 * 2**20


def test_front_end_is_bit_for_bit_repeatable():
    """Registration with several ITK threads summed its metric in thread-finishing order: the same scan
    registered twice in one process gave transforms ~1e-5 apart (a local run and a Dask worker differed
    by supra-threshold voxels). Whatever the process's ITK default, every run now gives the same bits."""
    import SimpleITK as sitk

    from medidiff.model.store import read_metadata
    from medidiff.preprocess_config import PreprocessConfig

    pcfg = PreprocessConfig.from_dict(read_metadata(ROOT / "models" / "brain_t1_4mm")["config"]["preprocess"])
    vol = read_nifti(ROOT / "sample_data" / "val" / "val_a01.nii.gz")
    prev = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        results = []
        for threads in (4, 2, 4):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            results.append(run_frontend(vol, pcfg.frontend_config(), pcfg.modality))
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 4  # the caller's setting is restored
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(prev)
    first = results[0]
    for other in results[1:]:
        np.testing.assert_array_equal(first.template_to_scan, other.template_to_scan)
        np.testing.assert_array_equal(first.log_bias, other.log_bias)
        np.testing.assert_array_equal(first.brain_source, other.brain_source)
