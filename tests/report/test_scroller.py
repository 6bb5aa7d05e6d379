"""The scroller's embedded volume decodes to what the report shows, and the run's
colour scale and number formats are what the pages print."""

from __future__ import annotations

import base64
import gzip

import numpy as np

from medidiff.report.evaluation import metric_tables
from medidiff.report.explain import cm3
from medidiff.report.render import ColourScale, nice_ceil, prepare, run_scale
from medidiff.report.scroller import MAP_STEP, block_reduce, payload
from medidiff.report.wording import stamp


def _decode(meta, data):
    raw = gzip.decompress(base64.b64decode(data))
    shape = tuple(meta["shape"])
    n = int(np.prod(shape))
    assert len(raw) == 4 * n
    scan = np.frombuffer(raw[:n], np.uint8).reshape(shape)
    amap = np.frombuffer(raw[n:3 * n], "<i2").reshape(shape) * MAP_STEP
    flags = np.frombuffer(raw[3 * n:], np.uint8).reshape(shape)
    return scan, amap, flags


def test_payload_round_trip_small_volume():
    rng = np.random.default_rng(0)
    scan = rng.normal(100, 10, (12, 14, 10)).astype(np.float32)
    amap = rng.normal(0, 1, scan.shape).astype(np.float32)
    amap[3, 4, 5] = 12.34
    mask = (amap > 3).astype(np.uint8)
    gt = np.zeros(scan.shape, np.uint8)
    gt[2:5, 3:6, 4:7] = 1
    prep = prepare(amap, np.diag([2.0, 2.0, 3.0, 1.0]), scan=scan, mask=mask, gt=gt)
    meta, data = payload(prep, ColourScale(10.0, 4.0, "z"))
    s, a, f = _decode(meta, data)
    assert meta["factor"] == 1 and meta["shape"] == [12, 14, 10]
    np.testing.assert_allclose(a, np.round(amap / MAP_STEP) * MAP_STEP, atol=1e-6)
    assert list(np.unravel_index(np.argmax(a), a.shape)) == meta["peak"] == [3, 4, 5]
    assert np.array_equal(f & 1, mask) and np.array_equal(f >> 1, gt)
    assert meta["has_gt"] and meta["vmax"] == 10.0 and len(meta["lut"]) == 256


def test_payload_block_reduces_large_volumes_keeping_the_peak():
    amap = np.zeros((300, 260, 200), np.float32)
    amap[151, 77, 33] = 8.0
    prep = prepare(amap, np.eye(4))
    meta, data = payload(prep, ColourScale(10.0, None, "z"))
    assert meta["factor"] == 3 and meta["shape"] == [100, 87, 67]
    _, a, _ = _decode(meta, data)
    assert a.max() == 8.0 and meta["peak"] == [50, 25, 11] and a[50, 25, 11] == 8.0
    # block k's centre in the reduced affine is voxel 3k + 1 of the original
    np.testing.assert_allclose(np.asarray(meta["affine"]) @ [50, 25, 11, 1], [151, 76, 34, 1])
    assert len(data) < 100_000  # an all-zero volume compresses to almost nothing
    assert block_reduce(np.arange(8.0).reshape(2, 2, 2), 2, "mean").item() == 3.5


def test_one_readable_scale_and_formats():
    assert [nice_ceil(v) for v in (0.7, 1.0, 3.3, 7.66, 24.0, 0.0)] == [1.0, 1.0, 5.0, 10.0, 25.0, 1.0]
    assert run_scale(3.83, "z").vmax == 10.0  # twice the threshold, rounded up
    assert run_scale(None, "raw", [0.2, 0.31, float("nan")]).vmax == 0.5
    sc = ColourScale(10.0, 4.0, "z")
    assert np.allclose(sc.colours(np.array([11.0])), 1.0)  # clipped values are drawn white
    assert sc.alpha(np.array([1.9]))[0] == 0.0 and sc.alpha(np.array([4.0]))[0] == 0.7
    assert [cm3(v) for v in (17130.0, 4700.0, 512.0, 5.0, 0.0, None)] == ["17.1", "4.7", "0.51", "0.005", "0", "—"]
    assert stamp("2026-01-02T03:04:05+01:00") == "2026-01-02 02:04 UTC" and stamp(None) == "—"
    tables = metric_tables({"n_evaluated": 4, "sample": {"ap": 0.5, "ap_ci95": [0.25, 0.75], "scans": [1, 2]},
                            "definitions": "x"})
    assert tables[0] == {"title": "overview", "rows": [("n evaluated", "4")]}
    assert tables[1]["rows"] == [("ap", "0.500 [0.250, 0.750]"), ("scans", "1, 2")]
