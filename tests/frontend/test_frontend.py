"""The real-scan front end: template, geometry bridge, registration, QC and template-space preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from frontend_factory import rotation, scan_from_template, template_to_scan
from medidiff.frontend import FrontEndConfig, QCFailed, load_template, run_frontend, template_grid_affine
from medidiff.frontend.brain import resolve_method
from medidiff.frontend.sitk_bridge import from_sitk, to_sitk, transform_matrix_ras
from medidiff.preprocess import preprocess
from medidiff.preprocess_config import PreprocessConfig
from medidiff.volume import Provenance, Volume

REAL = Path(__file__).resolve().parents[3] / "shared" / "real_scans"
CFG = FrontEndConfig(brain="skull_stripped", bias="none")


def brain_corners_error(m_est: np.ndarray, m_true: np.ndarray) -> float:
    """Largest displacement (mm) between two template→scan matrices over the template brain's box corners."""
    c = np.array([[x, y, z, 1.0] for x in (-70, 70) for y in (-105, 70) for z in (-50, 80)])
    return float(np.max(np.linalg.norm((c @ m_est.T - c @ m_true.T)[:, :3], axis=1)))


def test_template_ships_with_a_stable_hash_and_mni_centre():
    tpl = load_template()
    assert tpl.t1.shape == (99, 117, 95) and np.allclose(tpl.spacing, 2.0)
    assert len(tpl.sha256) == 64 and load_template().sha256 == tpl.sha256
    ml = tpl.brain.sum() * 8 / 1000
    assert 1400 < ml < 2100
    assert np.allclose(tpl.brain_centre(), [0, -17, 5], atol=3)
    grid = template_grid_affine((4, 4, 4), (40, 48, 40))
    centre = grid @ np.array([19.5, 23.5, 19.5, 1.0])
    assert np.allclose(centre[:3], tpl.brain_centre())


@pytest.mark.parametrize("flip", [False, True])
def test_sitk_bridge_keeps_world_coordinates(flip):
    import SimpleITK as sitk

    a = np.diag([2.0, 3.0, 4.0, 1.0])
    a[:3, :3] = rotation(10, 0, 20) @ a[:3, :3]
    a[:3, 3] = [10, -20, 30]
    if flip:
        a = np.diag([-1.0, -1.0, 1.0, 1.0]) @ a
    arr = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    img = to_sitk(arr, a)
    assert np.array_equal(from_sitk(img), arr)
    ras = a @ np.array([4, 2, 3, 1.0])
    lps = img.TransformIndexToPhysicalPoint((4, 2, 3))
    assert np.allclose([-lps[0], -lps[1], lps[2]], ras[:3], atol=1e-6)
    t = sitk.AffineTransform(3)
    t.SetMatrix(rotation(0, 0, 30).ravel().tolist())
    t.SetTranslation((1.0, 2.0, 3.0))
    m = transform_matrix_ras(t)
    p_lps = np.array([5.0, -7.0, 9.0])
    q_lps = np.array(t.TransformPoint(tuple(p_lps)))
    flipv = np.array([-1, -1, 1.0])
    assert np.allclose((m @ np.r_[p_lps * flipv, 1])[:3], q_lps * flipv, atol=1e-9)


@pytest.mark.parametrize("orientation", ["LPS", "PSR"])
def test_registration_recovers_a_known_head_pose(orientation):
    truth = template_to_scan()
    vol = scan_from_template(truth, orientation=orientation)
    fe = run_frontend(vol, CFG)
    assert brain_corners_error(fe.template_to_scan, truth) < 4.0  # mm, at the brain's extremes
    assert fe.qc["registration_similarity"] > 0.9
    assert fe.qc["brain_method"] == "skull_stripped"


def _locally_expanded_scan(to_scan, centre, sigma=15.0, amp=8.0):
    """A template scan whose tissue around ``centre`` is pushed outwards (as by larger ventricles):
    scan point to_scan(x) shows the template at x - w(x). Returns the volume and w."""
    from scipy import ndimage

    def w(x):
        d = x - centre
        return amp * np.exp(-(d ** 2).sum(-1) / (2 * sigma ** 2))[..., None] * d / sigma

    tpl = load_template()
    shape, sp = (66, 80, 68), 3.0
    a = np.diag([sp, sp, sp, 1.0])
    a[:3, 3] = -(np.array(shape) - 1) / 2 * sp + np.array([0.0, -10.0, 10.0])
    world = np.moveaxis(np.indices(shape, dtype=np.float64), 0, -1) @ a[:3, :3].T + a[:3, 3]
    inv = np.linalg.inv(to_scan)
    x = world @ inv[:3, :3].T + inv[:3, 3]
    ti = np.linalg.inv(tpl.affine)
    v = (x - w(x)) @ ti[:3, :3].T + ti[:3, 3]
    arr = ndimage.map_coordinates(tpl.t1, np.moveaxis(v, -1, 0), order=1) * 900
    return Volume(arr.astype(np.float32), a, Provenance(source_paths=["expanded.nii.gz"], format="nifti",
                                                       scan_id="expanded")), w


def test_deformable_refinement_follows_a_local_expansion_and_leaves_the_rest():
    from scipy import ndimage

    centre = np.array([18.0, -12.0, 18.0])
    vol, w = _locally_expanded_scan(template_to_scan(), centre)
    fe = run_frontend(vol, FrontEndConfig(brain="skull_stripped", bias="none", registration="deformable"))
    assert fe.qc["deformable_similarity"] > fe.qc["registration_similarity"] + 0.01

    def est(q):
        vi = np.linalg.inv(fe.warp_affine) @ np.r_[q, 1.0]
        return np.array([ndimage.map_coordinates(fe.warp[k], vi[:3, None], order=1)[0] for k in range(3)])

    for q in (centre + [15.0, 0, 0], centre - [15.0, 0, 0], centre + [0, 0, 15.0]):
        true = w(q)
        along = est(q) @ true / np.linalg.norm(true)
        assert 0.3 * np.linalg.norm(true) < along < 1.5 * np.linalg.norm(true)  # the right way, not overshooting
    assert np.linalg.norm(est(np.array([-40.0, 30.0, 0.0]))) < 2.0  # far from the expansion: (almost) still

    # the warp rides along into template-space preprocessing, and maps still land on the scan's exact grid
    fcfg = FrontEndConfig(brain="skull_stripped", bias="none", registration="deformable")
    pre = preprocess(vol, PreprocessConfig(spacing=(4, 4, 4), grid=(40, 48, 40), space="template",
                                           intensity="wm_median", frontend=fcfg.to_dict()))
    assert pre.mapping.displacement is not None
    back = pre.mapping.to_source(pre.image)
    assert back.shape == vol.shape
    inside = pre.brain_source & (vol.array > 0.2 * vol.array.max())
    assert np.corrcoef(back[inside], vol.array[inside])[0, 1] > 0.85


def test_template_space_preprocessing_is_orientation_independent_and_inverts_exactly():
    cfg = PreprocessConfig(spacing=(4, 4, 4), grid=(40, 48, 40), space="template", intensity="wm_median",
                           frontend=CFG.to_dict())
    truth = template_to_scan()
    a = preprocess(scan_from_template(truth, orientation="LPS"), cfg)
    b = preprocess(scan_from_template(truth, orientation="PSR"), cfg)
    both = a.foreground & b.foreground
    assert both.sum() > 0.9 * a.foreground.sum()
    assert np.median(np.abs(a.image - b.image)[both]) < 0.03  # same anatomy on the same template grid
    # white matter sits at the configured level, top not clipped
    assert a.intensity["kind"] == "wm_median" and a.image.max() > 0.8
    # maps go back onto the scan's exact grid; the brain mask is on it too
    vol = scan_from_template(truth, orientation="PSR")
    back = b.mapping.to_source(b.image)
    assert back.shape == vol.shape and b.brain_source.shape == vol.shape
    assert np.allclose(b.mapping.source_affine, vol.affine)
    inside = b.brain_source & (vol.array > 0.2 * vol.array.max())
    corr = np.corrcoef(back[inside], vol.array[inside])[0, 1]
    shifted = np.corrcoef(np.roll(back, 2, axis=0)[inside], vol.array[inside])[0, 1]
    assert corr > 0.85 and corr > shifted + 0.1  # back in place (4 mm grid blurs; 6 mm off is clearly worse)
    assert b.qc["brain_inside_grid"] > 0.99 and 1000 < b.qc["brain_volume_ml"] < 2500


def test_auto_recognises_skull_stripped_input_and_ct():
    vol = scan_from_template(np.eye(4))
    assert resolve_method("auto", vol, "mri", 2100) == "skull_stripped"
    head = vol.array.copy()
    shell = (head == 0)
    head[shell] = 300.0  # a "scalp" filling the background: no longer a brain on zero
    assert resolve_method("auto", Volume(head, vol.affine), "mri", 2100) == "deepbet"
    assert resolve_method("auto", vol, "ct", 2100) == "ct_hu"
    assert resolve_method("deepbet", vol, "mri", 2100) == "deepbet"


def _where(vol):
    return vol.provenance.source_paths[0]


def test_qc_fails_a_phantom_with_a_reason():
    # a uniform cylinder: brain-sized, but nothing like a brain after registration
    n = 60
    z, y, x = np.mgrid[:n, :n, :n]
    arr = (((x - n / 2) ** 2 + (y - n / 2) ** 2 < (n / 2.6) ** 2) & (z > 5) & (z < n - 5)).astype(np.float32) * 500
    vol = Volume(arr, np.diag([2.6, 2.6, 2.6, 1.0]), Provenance(source_paths=["phantom.nii.gz"]))
    with pytest.raises(QCFailed) as err:
        run_frontend(vol, CFG)
    msg = str(err.value)
    assert msg.startswith("phantom.nii.gz: ") and ("registration failed" in msg or "brain volume" in msg)


def test_qc_fails_a_localizer_and_half_a_head():
    vol = scan_from_template(np.eye(4))
    loc = Volume(vol.array[:, :, 30:33].copy(), vol.affine, Provenance(source_paths=["loc.nii.gz"]))
    with pytest.raises(QCFailed, match=r"loc.nii.gz: (no brain found|brain volume \d+ ml outside)"):
        run_frontend(loc, CFG)
    half = vol.array.copy()
    half[:, :, : half.shape[2] // 2 + 4] = 0  # the lower half of the brain is cut off
    with pytest.raises(QCFailed, match=r"half.nii.gz: (brain volume|registration failed|only)"):
        run_frontend(Volume(half, vol.affine, Provenance(source_paths=["half.nii.gz"])), CFG)


def test_qc_fails_an_abdomen_ct():
    # soft tissue body (~40 HU) with fat, lungs and a spine: far too big to be a brain
    n = (120, 90, 60)
    x, y, _ = np.meshgrid(*[np.linspace(-1, 1, k) for k in n], indexing="ij")
    body = (x ** 2 + y ** 2) < 0.8
    hu = np.full(n, -1000.0, np.float32)
    hu[body] = -100.0
    hu[(x ** 2 + y ** 2) < 0.6] = 40.0
    hu[((x + 0.1) ** 2 + (y - 0.55) ** 2) < 0.01] = 700.0
    vol = Volume(hu, np.diag([3.0, 3.0, 5.0, 1.0]), Provenance(source_paths=["abdomen.nii.gz"], modality="CT"))
    with pytest.raises(QCFailed, match=r"abdomen.nii.gz: brain volume \d+ ml outside"):
        run_frontend(vol, FrontEndConfig(brain="auto"), modality="ct")


@pytest.mark.skipif(not (REAL / "ixi012_philips3t_t1.nii.gz").is_file(), reason="the real-scan folder beside the repository is not present")
def test_real_whole_head_mri_deepbet_n4_and_registration():
    from medidiff.io.nifti import read_nifti

    vol = read_nifti(REAL / "ixi012_philips3t_t1.nii.gz")
    fe = run_frontend(vol, FrontEndConfig())
    assert fe.qc["brain_method"] == "deepbet"
    assert 1200 < fe.qc["brain_volume_ml"] < 1900
    assert fe.qc["registration_similarity"] > 0.6
    # the mask is the brain, not the head: well inside the head's extent, bright scalp excluded
    head = vol.array > 0.15 * np.percentile(vol.array, 99)
    assert fe.brain_source.sum() < 0.6 * head.sum()
    assert fe.log_bias is not None and np.isfinite(fe.log_bias).all()


def test_model_records_its_front_end_and_refuses_one_it_cannot_reproduce(tmp_path):
    import json



    from medidiff.model.config import load_config
    from medidiff.model.network import build_network
    from medidiff.model.folder import CheckpointError
    from medidiff.model.store import load_model, save_model

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "tiny.yaml", ["preprocess.space=template", "preprocess.intensity=wm_median"])
    net = build_network(cfg.model)
    save_model(tmp_path, {k: v.clone() for k, v in net.state_dict().items()}, cfg, metadata={})
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["frontend"]["template_sha256"] == load_template().sha256
    assert meta["frontend"]["settings"]["brain"] == "auto" and meta["frontend"]["deepbet"]
    assert load_model(tmp_path).preprocess_config.space == "template"
    meta["frontend"]["template_sha256"] = "0" * 64  # a model made on another template
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="template .* differs"):
        load_model(tmp_path)
    del meta["frontend"]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="records no front end"):
        load_model(tmp_path)



def test_template_quantiles_standardise_contrast_keep_lesions_bright_and_invert():
    from medidiff.intensity import denormalize, template_quantile_map

    rng = np.random.default_rng(0)
    tpl = rng.gamma(9, 0.08, 20000)
    fg = np.ones(5000, bool)
    scan = rng.gamma(9, 0.05, 5000) ** 1.3  # another vendor's tissue contrast
    scan[:100] = 4 * np.percentile(scan, 99)  # a bright lesion (2 % of the brain)
    out, info = template_quantile_map(scan, fg, tpl)
    healthy = out[100:]
    for q in (10, 50, 90):  # the healthy brain now has the template's contrast
        assert abs(np.percentile(healthy, q) - np.percentile(tpl, q)) < 0.05 * np.percentile(tpl, 90)
    assert out[:100].min() > 2.5 * np.percentile(healthy, 99)  # the lesion is still far brighter
    info.update(kind="template_quantiles", low=0.0, high=1.0)
    assert np.allclose(denormalize(out, info), scan, rtol=1e-4, atol=1e-5)
