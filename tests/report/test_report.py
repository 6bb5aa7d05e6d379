"""HTML report: pages, failures, PHI, orientation-independent display, CLI."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
from volume_factory import reorient
from typer.testing import CliRunner

from medidiff.report.build import build_report
from medidiff.report.render import VIEWS, ColourScale, canonical, plane_for, render_scan



def _pages(report):
    return {p.relative_to(report).as_posix(): p.read_text() for p in report.rglob("*.html")}


def _relative_refs(html):
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_report_lists_every_scan_and_failure(scored_run):
    index = build_report(scored_run)
    report = index.parent
    assert index == scored_run / "report" / "index.html"
    html = index.read_text()
    scans = sorted(p.name for p in (scored_run / "scans").iterdir())
    assert len(scans) == 4
    for sid in scans:
        assert f'data-id="{sid}"' in html
        assert (report / "scans" / f"{sid}.html").is_file()
    # the broken file is listed as failed with its error, and its page explains it
    assert 'data-failed="1" data-warn="0" data-id="broken"' in html
    result = json.loads((scored_run / "scans" / "broken" / "result.json").read_text())
    assert result["status"] == "failed" and result["error"]
    assert result["error"].splitlines()[0].split(":")[-1].strip() in html
    assert "failed" in (report / "scans" / "broken.html").read_text()
    assert re.search(r'id="n-failed">1<', html)
    # rows sorted by score, highest first, failures last
    ids = re.findall(r'data-id="([^"]+)"', html)
    assert ids[-1] == "broken"
    # self-contained: relative links only, every referenced file exists, no remote resources
    for name, page in _pages(report).items():
        assert "http://" not in page and "https://" not in page, name
        base = (report / name).parent
        for ref in _relative_refs(page):
            if ref.startswith("data:"):
                continue
            from urllib.parse import unquote

            assert not ref.startswith("/"), ref
            assert (base / unquote(ref)).is_file(), f"{name} → {ref}"
    ok_page = (report / "scans" / "lesion_RAS.html").read_text()
    for png in ("views.png", "mosaic.png", "compare.png", "distribution.png"):
        assert f"lesion_RAS/{png}" in ok_page
    assert "reconstruction" in ok_page and "t*" in ok_page


def test_phi_hidden_by_default_and_shown_with_flag(scored_run, phi):
    report = build_report(scored_run).parent
    pages = _pages(report)
    dicom = [n for n, p in pages.items() if n.startswith("scans/MR")]
    assert len(dicom) == 1, list(pages)
    for name, page in pages.items():
        for s in (phi["name"], phi["id"], *phi["name"].split("^"), *phi["folder"].split("_")):
            assert s not in page, f"{s!r} in {name}"
    assert "folder hidden" in pages[dicom[0]]
    import pydicom

    first = next((scored_run.parent / "in" / phi["folder"]).iterdir())
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
    for name, page in pages.items():
        assert not any(u in page for u in uids), name
    report = build_report(scored_run, show_phi=True).parent
    pages = _pages(report)
    page = pages[dicom[0]]
    assert phi["name"] in page and phi["id"] in page and phi["folder"] in page
    assert all(u in page for u in uids)
    assert "--show-phi" in pages["index.html"]


def test_lps_and_ras_render_identically(mni_small, tmp_path):
    data, affine = mni_small
    rng = np.random.default_rng(1)
    amap = np.abs(rng.normal(0, 1, data.shape)).astype(np.float32)
    amap[5:9, 12:15, 10:13] += 6  # asymmetric blob: any flip would show
    mask = (amap > 4).astype(np.uint8)
    recon = (data * 0.9).astype(np.float32)
    outs = {}
    for kind in ("RAS", "LPS"):
        stored = [reorient(x, affine, kind) for x in (data, amap, mask, recon)]
        a = stored[0][1]
        assert "".join(nib.aff2axcodes(a)) == kind
        v = render_scan(tmp_path / kind, stored[1][0], a, ColourScale(10.0, 4.0, "anomaly"), scan=stored[0][0],
                        mask=stored[2][0], gt=stored[2][0], recon=stored[3][0],
                        cluster_worlds=[(-30.0, 10.0, 40.0), (30.0, -40.0, -30.0)])
        outs[kind] = v
    ras, lps = outs["RAS"], outs["LPS"]
    assert ras.labels == lps.labels
    assert ras.labels["axial"] == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert ras.labels["coronal"] == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert ras.labels["sagittal"] == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    np.testing.assert_allclose(ras.peak_world, lps.peak_world, atol=1e-4)
    assert ras.mosaic_slices == lps.mosaic_slices and "peak" in dict(ras.mosaic_slices).values()
    assert {"cluster 1", "cluster 2"} <= set(dict(ras.mosaic_slices).values())
    for name in ras.files.values():
        a = np.asarray(__import__("matplotlib.image", fromlist=["imread"]).imread(tmp_path / "RAS" / name))
        b = np.asarray(__import__("matplotlib.image", fromlist=["imread"]).imread(tmp_path / "LPS" / name))
        assert a.shape == b.shape and np.array_equal(a, b), name


def test_view_geometry_follows_the_affine():
    """A marker at the patient's right-anterior-superior corner lands where the letters say."""
    shape = (10, 12, 14)
    vol = np.zeros(shape, np.float32)
    vol[9, 11, 13] = 1  # +x (R), +y (A), +z (S) corner in a RAS-stored volume
    for kind in ("RAS", "LPS", "permuted"):
        d, a = reorient(vol, np.diag([2.0, 2.0, 3.0, 1.0]), kind)
        can = canonical(d, a)
        ijk = np.unravel_index(np.argmax(can.data), can.data.shape)
        for view in VIEWS:
            p = plane_for(view, can)
            img = p.extract(can.data, ijk[p.slice_axis])
            r, c = np.unravel_index(np.argmax(img), img.shape)
            edge_h = p.labels["left"] if c == 0 else p.labels["right"]
            edge_v = p.labels["top"] if r == 0 else p.labels["bottom"]
            assert c in (0, img.shape[1] - 1) and r in (0, img.shape[0] - 1)
            assert {edge_h, edge_v} <= {"R", "A", "S"}, (kind, view, edge_h, edge_v)


def test_labels_add_curves_and_evaluation_outputs_are_shown(scored_run, tmp_path):
    labels = tmp_path / "labels.csv"
    mr = next(p.name for p in (scored_run / "scans").iterdir() if p.name.startswith("MR"))
    labels.write_text(f"scan_id,label\nlesion_RAS,1\nlesion_LPS,0\n{mr},0\nbroken,1\n")
    html = build_report(scored_run, labels=labels).read_text()
    report = scored_run / "report"
    # no evaluation/ folder: the report draws its own curves from the labels
    assert 'src="assets/roc.png"' in html and (report / "assets" / "pr.png").is_file()
    assert "AUROC" in html and ">anomalous<" in html and ">healthy<" in html
    ev = scored_run / "evaluation"
    ev.mkdir(exist_ok=True)
    metrics = {"evaluated": "2024-05-01T10:00:00+00:00", "n_evaluated": 3,
               "sample": {"auroc": 0.75, "auroc_ci95": [0.5, 1.0], "at_fpr": {"0.05": {"sensitivity": 0.5}}},
               "voxel": {"available": False, "note": "no ground-truth masks"}, "definitions": "long text"}
    (ev / "metrics.json").write_text(json.dumps(metrics))
    (ev / "summary.md").write_text("# Evaluation\n\n![roc](roc_sample.png)\n| metric | value |\n|---|---|\n")
    import shutil

    shutil.copy(scored_run / "report" / "assets" / "scores.png", ev / "roc_sample.png")
    try:
        html = build_report(scored_run, labels=labels).read_text()
        assert "evaluation/roc_sample.png" in html and (report / "evaluation" / "roc_sample.png").is_file()
        assert 'src="assets/roc.png"' not in html  # one set of curves, not two
        assert "0.750 [0.500, 1.000]" in html and "at fpr › 0.05 › sensitivity" in html
        assert "2024-05-01 10:00 UTC" in html
        assert "![roc]" not in html and "| metric |" not in html and "long text" not in html  # no raw dumps
    finally:
        shutil.rmtree(ev)


def test_cli_report(scored_run, tmp_path):
    import typer

    from medidiff.commands.report import report

    app = typer.Typer()
    app.command()(report)
    runner = CliRunner()
    res = runner.invoke(app, ["--run", str(scored_run)])
    assert res.exit_code == 0, res.output
    assert "index.html" in res.output
    res = runner.invoke(app, ["--run", str(tmp_path)])
    assert res.exit_code == 2 and "not a scoring output folder" in res.output


def test_missing_source_still_shows_the_map(scored_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(scored_run, out, ignore=shutil.ignore_patterns("report"))
    res_path = out / "scans" / "lesion_RAS" / "result.json"
    res = json.loads(res_path.read_text())
    res["source_path"] = str(tmp_path / "gone.nii.gz")
    res_path.write_text(json.dumps(res))
    index = build_report(out)
    page = (index.parent / "scans" / "lesion_RAS.html").read_text()
    assert "source scan not shown" in page and "lesion_RAS/views.png" in page


def test_uncalibrated_and_empty_runs(tmp_path, mni_small):
    """No calibration (no thresholds, flags, percentiles, histogram) and an empty run both build."""
    empty = tmp_path / "empty"
    empty.mkdir()
    html = build_report(empty).read_text()
    assert "No scan results" in html and "run.json missing" in html
    out = tmp_path / "uncal"
    data, affine = mni_small
    scan_dir = out / "scans" / "a"
    scan_dir.mkdir(parents=True)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.abs(data - data.mean()).astype(np.float32), affine), scan_dir / "anomaly_map.nii.gz")
    (out / "run.json").write_text(json.dumps({"model_hash": "sha256:abc", "config_hash": "c1", "calibrated": False,
                                              "calibration": None, "t_star": [150], "input": str(tmp_path),
                                              "model_dir": str(tmp_path / "nomodel")}))
    (scan_dir / "result.json").write_text(json.dumps({
        "scan_id": "a", "source_path": str(tmp_path / "a.nii.gz"), "format": "nifti", "status": "ok", "score": 1.5,
        "percentile": None, "flag": None, "outputs": {"anomaly_map": "anomaly_map.nii.gz"}, "warnings": ["low SNR"]}))
    index = build_report(out)
    html = index.read_text()
    page = (index.parent / "scans" / "a.html").read_text()
    assert "uncalibrated" in html and "low SNR" in html and 'data-warn="1"' in html
    assert "no contour: the run is not calibrated" in page and "No healthy score distribution" in page
    assert (index.parent / "scans" / "a" / "views.png").is_file()
