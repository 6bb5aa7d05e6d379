"""Reading the next scan ahead (GPU batches): same maps and records as scoring one after the other,
each scan read and put through the front end once, errors kept with their scan."""

from __future__ import annotations

import json
import threading

import nibabel as nib
import numpy as np
import pytest

import medidiff.preprocess as preprocess_module
from medidiff.batch.prefetch import PrefetchedRef, prefetching
from medidiff.batch.run import score_folder
from medidiff.score.cache import FirstPassCache

FAST = ("score.n_draws=1", "score.batch_size=4")


class _Ref:
    def __init__(self, name, fail=False):
        self.scan_id, self.source, self.fail, self.loads = name, f"/in/{name}", fail, []

    def load(self):
        self.loads.append(threading.current_thread().name)
        if self.fail:
            raise ValueError(f"{self.source}: not a scan")
        return np.full(3, len(self.scan_id))


def test_refs_come_in_order_read_once_on_the_background_thread_and_errors_stay_with_their_scan():
    refs = [_Ref("a"), _Ref("bb", fail=True), _Ref("ccc")]
    warmed = []
    got = []
    for ref in prefetching(refs, lambda v: warmed.append(int(v[0]))):
        assert isinstance(ref, PrefetchedRef)
        if ref.scan_id == "bb":
            with pytest.raises(ValueError, match="/in/bb: not a scan"):
                ref.load()
        else:
            got.append((ref.scan_id, ref.source, int(ref.load()[0])))
    assert got == [("a", "/in/a", 1), ("ccc", "/in/ccc", 3)]
    assert warmed == [1, 3]  # the failed read is not warmed
    assert all(r.loads and all(t.startswith("medidiff-prefetch") for t in r.loads) for r in refs)
    assert [len(r.loads) for r in refs] == [1, 1, 1]


def test_a_failing_warm_up_is_left_to_the_scorer():
    def warm(v):
        raise RuntimeError("registration failed")

    (ref,) = list(prefetching([_Ref("a")], warm))
    assert int(ref.load()[0]) == 1


def test_the_bounded_cache_drops_the_oldest_entries():
    cache = FirstPassCache(max_items=2)
    for key in "abc":
        cache.fetch(key, lambda key=key: key.upper())
    assert len(cache) == 2 and cache.fetch("c", lambda: "new") == "C" and cache.fetch("a", lambda: "new") == "new"


def test_prefetching_batch_writes_the_maps_of_a_sequential_one(tiny_model_dir, mni_small, tmp_path, monkeypatch):
    data, affine = mni_small
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        nib.save(nib.Nifti1Image((data * rng.uniform(0.9, 1.1)).astype(np.float32), affine), inp / f"s{i}.nii.gz")
    good = (inp / "s0.nii.gz").read_bytes()
    (inp / "broken.nii.gz").write_bytes(good[: len(good) // 2])  # found, but fails while reading

    calls = []
    real = preprocess_module.preprocess

    def counting(volume, cfg):
        calls.append(threading.current_thread().name)
        return real(volume, cfg)

    monkeypatch.setattr(preprocess_module, "preprocess", counting)
    runs = {}
    for prefetch in (False, True):
        calls.clear()
        out = tmp_path / f"out_{prefetch}"
        summary = score_folder(tiny_model_dir, inp, out, overrides=FAST, progress=False, log=lambda m: None,
                               prefetch=prefetch)
        runs[prefetch] = out
        assert summary.n_scored == 3 and summary.n_failed == 1, summary
        assert len(calls) == 3  # each scan's front end runs once
        assert all(t.startswith("medidiff-prefetch") for t in calls) == prefetch
    for i in range(3):
        a, b = (nib.load(runs[p] / "scans" / f"s{i}" / "anomaly_map.nii.gz") for p in (False, True))
        np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())
        np.testing.assert_array_equal(a.affine, b.affine)
        ra, rb = (json.loads((runs[p] / "scans" / f"s{i}" / "result.json").read_text()) for p in (False, True))
        assert ra["score"] == rb["score"]
    failures = [json.loads((runs[p] / "summary.json").read_text())["failures"] for p in (False, True)]
    assert failures[0] == failures[1] and "broken" in failures[0][0]["error"]


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_a_gpu_batch_reads_ahead_by_default(tiny_model_dir, mni_small, tmp_path):
    data, affine = mni_small
    (tmp_path / "in").mkdir()
    for i in range(2):
        nib.save(nib.Nifti1Image(data * (1 + 0.05 * i), affine), tmp_path / "in" / f"s{i}.nii.gz")
    said = []
    summary = score_folder(tiny_model_dir, tmp_path / "in", tmp_path / "out", overrides=FAST, device="cuda",
                           progress=False, log=said.append)
    assert summary.n_scored == 2 and any("reading ahead" in m for m in said)
