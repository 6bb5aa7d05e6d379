"""Patch-based model: coordinates, patch sampling, sliding-window assembly, train → load → score."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medidiff.model.patches import SlidingWindowDenoiser, coordinate_grid, crop, draw_patch_origin

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_helpers import blob_volume, synthetic_prepared, tiny_config  # noqa: E402


class Channel(torch.nn.Module):
    """Returns one input channel: lets a test see exactly what each window was given."""

    def __init__(self, c: int):
        super().__init__()
        self.c = c

    def forward(self, x, timesteps):
        assert timesteps.shape == (x.shape[0],)
        return x[:, self.c:self.c + 1] * 1.0


def test_coordinates_and_patch_origins():
    c = coordinate_grid((5, 7, 9))
    assert c.shape == (3, 5, 7, 9) and c.min() == -1 and c.max() == 1
    assert np.allclose(c[0, :, 3, 4], np.linspace(-1, 1, 5))
    fg = np.zeros((20, 24, 20), bool)
    fg[15:18, 2:4, 9:11] = True
    rng = np.random.default_rng(0)
    for _ in range(50):
        o = draw_patch_origin(fg, (8, 8, 8), rng, foreground_bias=1.0)
        assert all(0 <= v <= s - 8 for v, s in zip(o, fg.shape))
        assert crop(fg, o, (8, 8, 8)).any()  # centred on the brain as far as the border allows


@pytest.mark.parametrize("grid,patch", [((16, 20, 12), (8, 8, 8)), ((12, 12, 12), (12, 12, 12))])
def test_sliding_windows_reassemble_the_grid_exactly(grid, patch):
    x = torch.randn(2, 1, *grid)
    same = SlidingWindowDenoiser(Channel(0), grid, patch, overlap=0.25)(x, torch.tensor([3, 9]))
    assert torch.allclose(same, x, atol=1e-5)  # Gaussian blending of an identity is the identity
    where = SlidingWindowDenoiser(Channel(2), grid, patch, overlap=0.5)(x, torch.tensor(5))
    expected = torch.from_numpy(coordinate_grid(grid))[1]
    assert torch.allclose(where[0, 0], expected, atol=1e-5)  # every window saw its own location


def test_patch_batches_carry_their_coordinates():
    from medidiff.train.data import make_batch

    data = synthetic_prepared(n=3, grid=(16, 16, 16))
    b = make_batch(data, step=4, batch_size=2, rank=0, world=1, seed=0, aug=None, patch=(8, 8, 8))
    assert b.shape == (2, 4, 8, 8, 8)
    full = coordinate_grid((16, 16, 16))
    # the coordinate channels are a crop of the full grid's coordinates: find it
    lo = [(b[0, 1 + a].min() + 1) / 2 * 15 for a in range(3)]
    o = [int(round(v)) for v in lo]
    assert np.allclose(b[0, 1:], crop(full, o, (8, 8, 8)))
    again = make_batch(data, step=4, batch_size=2, rank=0, world=1, seed=0, aug=None, patch=(8, 8, 8))
    assert np.array_equal(b, again)  # deterministic in (seed, step, rank)


def test_patch_model_trains_loads_as_sliding_window_and_scores(tmp_path):
    from medidiff.score.config import load_score_config
    from medidiff.score.pipeline import Scorer
    from medidiff.model.store import load_model
    from medidiff.train.loop import Trainer

    cfg = tiny_config("model.patch_size=[8,8,8]", "train.max_steps=4", "train.checkpoint_every=4")
    tr = Trainer(cfg, synthetic_prepared(n=4), synthetic_prepared(n=2, seed=1), tmp_path, device="cpu",
                 progress=False)
    losses = [tr.train_step(s) for s in range(4)]
    assert all(np.isfinite(losses))
    assert np.isfinite(tr.validate())
    tr.save()
    loaded = load_model(tmp_path)
    assert isinstance(loaded.network, SlidingWindowDenoiser)
    assert loaded.network.unet.conv_in.conv.in_channels == 4
    res = Scorer(loaded, load_score_config(None, [])).score_volume(blob_volume(0))
    assert res.anomaly_map.shape == blob_volume(0).shape and np.isfinite(res.anomaly_map).all()
    # score.window_overlap: other windows over the same weights, a setting of its own (hashed)
    scorer = Scorer(loaded, load_score_config(None, ["score.window_overlap=0.5"]))
    assert scorer.reconstructor.net.overlap == 0.5 and loaded.network.overlap == cfg.model.patch_overlap
    assert scorer.reconstructor.net.unet is loaded.network.unet
    assert scorer.settings_hash() != Scorer(loaded, load_score_config(None, [])).settings_hash()
    other = Scorer(loaded, load_score_config(None, ["score.window_overlap=0.5"])).score_volume(blob_volume(0))
    assert np.isfinite(other.anomaly_map).all() and not np.array_equal(other.anomaly_map, res.anomaly_map)


def test_window_overlap_is_refused_for_a_whole_grid_model(tiny_model_dir):
    from medidiff.score.config import ScoreConfig, load_score_config
    from medidiff.score.pipeline import Scorer
    from medidiff.model.store import load_model

    with pytest.raises(ValueError, match="patch models only"):
        Scorer(load_model(tiny_model_dir), load_score_config(None, ["score.window_overlap=0"]))
    with pytest.raises(ValueError, match="window_overlap"):
        ScoreConfig(window_overlap=1.0)
    # unset, the field leaves the settings hash of every calibration made before it existed as it was
    # (the stored form: brain_t1_2mm's was made before numbers were canonical, see tests/score/test_method.py)
    from medidiff.score.config import stored_hash_forms

    root = Path(__file__).resolve().parents[2]
    for model in ("brain_t1_4mm", "brain_t1_2mm"):
        cal = json.loads((root / "models" / model / "calibration.json").read_text())
        assert cal["score_config_hash"] in stored_hash_forms(cal["score_config"], cal["runtime"]), model
    assert ScoreConfig(window_overlap=0.0).hash() != ScoreConfig().hash()
