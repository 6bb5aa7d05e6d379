import numpy as np
import pytest

from medidiff.geometry import GridMapping, model_affine, resample
from medidiff.preprocess import preprocess
from medidiff.preprocess_config import PreprocessConfig
from medidiff.volume import Volume


def _world_fn(xyz):
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return (np.sin(x / 11.0) + np.cos(y / 13.0) + 0.5 * np.sin(z / 9.0 + 0.3 * x / 10.0)).astype(np.float32)


def _sample(shape, affine, fn):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float64)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return fn(world)


def _ras_affine(spacing=(2.0, 2.0, 2.0), origin=(-40.0, -50.0, -36.0)):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def _phantom(world):
    """Brain-like blob (ellipsoid with interior texture + a bright spot) in world mm."""
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    r = (x / 30.0) ** 2 + (y / 38.0) ** 2 + (z / 28.0) ** 2
    inside = r < 1.0
    tex = 100 + 20 * np.sin(x / 7.0) * np.cos(y / 9.0) + 10 * np.cos(z / 5.0)
    bright = ((x - 8) ** 2 + (y + 5) ** 2 + (z - 4) ** 2) < 16
    return np.where(inside, tex + 200 * bright, 0.0).astype(np.float32)


def _reoriented(array, affine, perm=(0, 1, 2), flips=(False, False, False)):
    """Same samples stored differently: flip then permute the voxel axes, affine follows exactly."""
    arr = array
    aff = affine.copy()
    for ax, f in enumerate(flips):
        if f:
            n = arr.shape[ax]
            arr = np.flip(arr, axis=ax)
            flip = np.eye(4)
            flip[ax, ax] = -1
            flip[ax, 3] = n - 1
            aff = aff @ flip
    arr = np.transpose(arr, perm)
    p = np.eye(4)
    p[:3, :3] = np.eye(3)[:, perm]
    aff = aff @ p
    return np.ascontiguousarray(arr), aff


def _oblique_affine(spacing=(1.8, 2.2, 2.5), angles=(0.2, -0.15, 0.3), centre_shape=(40, 48, 36)):
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = rz @ ry @ rx @ np.diag(spacing)
    a = np.eye(4)
    a[:3, :3] = m
    a[:3, 3] = -m @ ((np.array(centre_shape) - 1) / 2.0)
    return a


SHAPE = (40, 48, 36)
CFG = PreprocessConfig(spacing=(3.0, 3.0, 3.0), grid=(32, 36, 30))


@pytest.mark.parametrize("kind", ["ras", "lps", "permuted", "oblique"])
def test_round_trip_smooth_function(kind):
    aff = _ras_affine()
    if kind == "oblique":
        aff = _oblique_affine()
    src = _sample(SHAPE, aff, _world_fn)
    if kind == "lps":
        src, aff = _reoriented(src, aff, flips=(True, True, False))
    elif kind == "permuted":
        src, aff = _reoriented(src, aff, perm=(2, 0, 1), flips=(False, True, False))
    shape = src.shape
    centre = aff[:3, :3] @ ((np.array(shape) - 1) / 2) + aff[:3, 3]
    m = GridMapping(shape, aff, (30, 34, 28), model_affine((2.5, 2.5, 2.5), (30, 34, 28), centre))
    on_model = m.to_model(src)
    # model-grid values are the function at model world coords
    expect_model = _sample(m.model_shape, m.model_affine, _world_fn)
    fov = m.source_fov_on_model()
    from scipy import ndimage
    inner = ndimage.binary_erosion(fov, iterations=2)
    assert inner.sum() > 1000
    assert np.abs(on_model - expect_model)[inner].max() < 0.03
    back = m.to_source(on_model)
    assert back.shape == shape and back.dtype == np.float32
    cover = m.to_source(np.ones(m.model_shape, np.float32), order=0) > 0.5
    cover &= ndimage.binary_erosion(m.to_source(fov.astype(np.float32), order=0) > 0.5, iterations=3)
    assert cover.sum() > 1000
    assert np.abs(back - src)[cover].max() < 0.05
    # JSON round trip of the mapping
    import json
    m2 = GridMapping.from_dict(json.loads(json.dumps(m.to_dict())))
    np.testing.assert_array_equal(m2.model_affine, m.model_affine)
    np.testing.assert_array_equal(m2.source_affine, m.source_affine)
    assert m2.source_shape == m.source_shape and m2.model_shape == m.model_shape


def test_same_anatomy_different_orientations_identical():
    aff = _ras_affine()
    base = _sample(SHAPE, aff, _phantom)
    out = []
    for perm, flips in [((0, 1, 2), (False, False, False)),   # RAS
                        ((0, 1, 2), (True, True, False)),     # LPS
                        ((2, 0, 1), (False, True, True)),     # permuted + flips
                        ((1, 2, 0), (True, False, False))]:
        arr, a = _reoriented(base, aff, perm, flips)
        out.append(preprocess(Volume(arr, a), CFG))
    ref = out[0]
    assert ref.image.shape == CFG.grid and ref.image.dtype == np.float32
    assert ref.foreground.dtype == bool and ref.foreground.shape == CFG.grid
    for p in out[1:]:
        np.testing.assert_allclose(p.image, ref.image, atol=1e-4)
        np.testing.assert_array_equal(p.foreground, ref.foreground)
        np.testing.assert_allclose(p.mapping.model_affine, ref.mapping.model_affine, atol=1e-9)
        assert p.intensity["high"] == pytest.approx(ref.intensity["high"], rel=1e-5)


def test_shapes_affines_exact_and_centring():
    aff = _ras_affine()
    pp = preprocess(Volume(_sample(SHAPE, aff, _phantom), aff), CFG)
    ma = pp.mapping.model_affine
    np.testing.assert_array_equal(ma[:3, :3], np.diag(CFG.spacing))
    np.testing.assert_array_equal(ma[3], [0, 0, 0, 1])
    assert pp.mapping.source_shape == SHAPE and pp.mapping.model_shape == CFG.grid
    np.testing.assert_array_equal(pp.mapping.source_affine, aff)
    # centre of the model grid = centre of the phantom's world bbox (≈ origin, within a voxel)
    centre = ma[:3, :3] @ ((np.array(CFG.grid) - 1) / 2) + ma[:3, 3]
    assert np.all(np.abs(centre) < 2.0)
    assert pp.mapping.to_source(pp.image).shape == SHAPE
    # background zeroed, foreground plausible
    assert np.all(pp.image[~pp.foreground] == 0)
    assert 0.05 < pp.foreground.mean() < 0.6


def test_normalisation_keeps_bright_voxels():
    aff = _ras_affine()
    pp = preprocess(Volume(_sample(SHAPE, aff, _phantom), aff), CFG)
    assert pp.intensity["kind"] == "percentile"
    # tissue ~ 1, the bright spot (3x tissue in the source) is not clipped
    assert pp.image.max() > 1.5
    tissue = np.median(pp.image[pp.foreground])
    assert 0.3 < tissue < 1.1
    np.testing.assert_allclose(pp.denormalize(np.array([0.0, 1.0])), [pp.intensity["low"], pp.intensity["high"]], rtol=1e-6)


def test_ct_window_and_config_roundtrip():
    aff = _ras_affine()
    hu = _sample(SHAPE, aff, _phantom) * 4 - 1000  # air -1000, tissue ~ -600..+600
    cfg = PreprocessConfig(modality="ct", spacing=(3, 3, 3), grid=(24, 24, 24), ct_window=(-1000, 1000))
    pp = preprocess(Volume(hu, aff), cfg)
    assert pp.image.min() >= 0 and pp.image.max() <= 1
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="modality"):
        PreprocessConfig(modality="pet")
    with pytest.raises(ValueError, match="unknown preprocess option"):
        PreprocessConfig.from_dict({"spcing": [1, 1, 1]})


def test_resample_identity():
    aff = _ras_affine()
    arr = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    np.testing.assert_allclose(resample(arr, aff, aff, SHAPE), arr, atol=1e-6)


def test_subtract_low_option():
    aff = _ras_affine()
    vol = Volume(_sample(SHAPE, aff, _phantom), aff)
    a = preprocess(vol, CFG)
    b = preprocess(vol, PreprocessConfig(spacing=CFG.spacing, grid=CFG.grid, subtract_low=True))
    assert a.intensity["low"] == 0.0 and b.intensity["low"] == pytest.approx(b.intensity["p_low_value"])
    assert b.image.max() > 1.5  # still no clipping of the bright spot
    np.testing.assert_allclose(b.denormalize(b.image)[b.foreground], a.denormalize(a.image)[a.foreground], rtol=1e-4, atol=1e-3)


def _smooth_displacement(shape, amplitude=1.5):
    """A smooth warp (model voxels) of the kind a coarse B-spline makes: a few voxels, no folding."""
    i, j, k = np.indices(shape, dtype=np.float32)
    s = np.array(shape, dtype=np.float32)
    return np.stack([amplitude * np.sin(2 * np.pi * j / s[1]) * np.cos(np.pi * k / s[2]),
                     amplitude * np.cos(2 * np.pi * i / s[0]),
                     0.7 * amplitude * np.sin(np.pi * i / s[0]) * np.sin(np.pi * j / s[1])])


def test_zero_displacement_is_the_affine_mapping():
    src_aff = _ras_affine((1.5, 1.2, 2.0), (-45, -50, -40))
    src = _sample((60, 80, 40), src_aff, _world_fn)
    model_aff = model_affine((3, 3, 3), (28, 32, 26), (0, 0, 0))
    plain = GridMapping(src.shape, src_aff, (28, 32, 26), model_aff)
    bent = GridMapping(src.shape, src_aff, (28, 32, 26), model_aff, np.zeros((3, 28, 32, 26), np.float32))
    assert np.allclose(plain.to_model(src), bent.to_model(src), atol=1e-4)
    m = plain.to_model(src)
    assert np.allclose(plain.to_source(m), bent.to_source(m), atol=1e-4)


@pytest.mark.parametrize("stored", ["RAS", "LPS-permuted"])
def test_displaced_mapping_samples_the_warped_points_and_inverts(stored):
    from medidiff.geometry import invert_displacement

    shape = (28, 32, 26)
    src_aff = _ras_affine((1.0, 1.0, 1.0), (-50, -55, -45))
    src_shape = (100, 110, 90)
    if stored == "LPS-permuted":  # axes stored P, S, L (flipped and permuted, as sagittal exports are)
        src_aff = np.array([[0, 0, -1.0, 45], [-1.0, 0, 0, 55], [0, 1.0, 0, -45], [0, 0, 0, 1]])
        src_shape = (110, 90, 100)
    src = _sample(src_shape, src_aff, _world_fn)
    model_aff = model_affine((3, 3, 3), shape, (0, 0, 0))
    disp = _smooth_displacement(shape)
    mapping = GridMapping(src.shape, src_aff, shape, model_aff, disp)
    # model voxel i shows the world at model_affine @ (i + d(i))
    pts = np.moveaxis(np.indices(shape, dtype=np.float64) + disp, 0, -1)
    expected = _world_fn(pts @ model_aff[:3, :3].T + model_aff[:3, 3])
    got = mapping.to_model(src, antialias=False)
    assert np.abs(got - expected)[2:-2, 2:-2, 2:-2].max() < 0.02
    # the inverse field undoes the warp
    inv = invert_displacement(disp)
    at = np.indices(shape, dtype=np.float32) + inv
    from scipy import ndimage
    resid = at + np.stack([ndimage.map_coordinates(disp[c], at, order=1, mode="nearest") for c in range(3)])
    assert np.abs(resid - np.indices(shape))[:, 3:-3, 3:-3, 3:-3].max() < 0.05
    # a model-grid map lands back where it came from, on the source's exact grid
    back = mapping.to_source(got)
    assert back.shape == src.shape
    centre = tuple(slice(s // 4, 3 * s // 4) for s in src.shape)
    assert np.median(np.abs(back - src)[centre]) < 0.05
    # without the inverse warp (affine only) the same map lands measurably off
    flat = GridMapping(src.shape, src_aff, shape, model_aff).to_source(got)
    assert np.median(np.abs(flat - src)[centre]) > 2 * np.median(np.abs(back - src)[centre])
    # serialisation keeps the warp
    again = GridMapping.from_dict(mapping.to_dict())
    assert np.allclose(again.to_model(src, antialias=False), got, atol=1e-3)
