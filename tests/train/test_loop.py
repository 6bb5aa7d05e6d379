import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from train_helpers import synthetic_prepared, tiny_config
from medidiff.train.data import augment, make_batch, sample_indices
from medidiff.train.loop import Trainer
from medidiff.train.run import run_training


def _weights(run_dir, prefix="raw."):
    return {k: v for k, v in load_file(str(run_dir / "model.safetensors")).items() if k.startswith(prefix)}


def test_loss_decreases_on_fixed_batch():
    torch.manual_seed(0)
    cfg = tiny_config("train.lr=3e-3", "train.warmup_steps=0")
    tr = Trainer(cfg, synthetic_prepared(2), None, "/nonexistent", device="cpu", progress=False)
    x0 = torch.from_numpy(synthetic_prepared(2).images[:, None])
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (2,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    from medidiff.model.diffusion import add_noise
    import torch.nn.functional as F
    x_t = add_noise(tr.scheduler, x0, noise, t)
    losses = []
    for _ in range(15):
        out = tr.net(x_t, timesteps=t)
        loss = F.mse_loss(out, noise)
        tr.opt.zero_grad()
        loss.backward()
        tr.opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_resume_is_bit_for_bit(tmp_path):
    cfg = tiny_config("train.max_steps=4", "train.checkpoint_every=2", "train.val_every=2", "train.val_batches=1")
    data, val = synthetic_prepared(4), synthetic_prepared(2, seed=5)
    full = Trainer(cfg, data, val, tmp_path / "full", device="cpu", progress=False).run()
    assert full.steps == 4
    half = Trainer(cfg, data, val, tmp_path / "half", device="cpu", progress=False).run(max_steps=2)
    assert half.steps == 2
    res = Trainer(cfg, data, val, tmp_path / "half", device="cpu", progress=False).run(resume=True)
    assert res.steps == 4
    for prefix in ("raw.", "ema."):
        a, b = _weights(tmp_path / "full", prefix), _weights(tmp_path / "half", prefix)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert res.val_loss == full.val_loss
    assert (tmp_path / "full" / "loss_curve.png").stat().st_size > 1000


def test_time_budget_stops_and_saves(tmp_path):
    cfg = tiny_config("train.max_steps=100000", "train.checkpoint_every=100000")
    res = Trainer(cfg, synthetic_prepared(2), None, tmp_path / "run", device="cpu", progress=False).run(max_minutes=0.03)
    assert res.stopped == "time_budget"
    assert 0 < res.steps < 100000
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "train_state.json").is_file()


def test_run_training_from_nifti_folder(nifti_dir, tmp_path):
    import json

    cfg = tiny_config("train.max_steps=3", "train.val_fraction=0.25")
    res = run_training(cfg, nifti_dir, tmp_path / "run", device="cpu", progress=False, threads=1)
    assert res.steps == 3 and res.val_loss is not None
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["steps"] == 3 and meta["training_data"]["train"]["count"] == 3
    assert meta["training_data"]["val"]["count"] == 1
    assert meta["model_hash"].startswith("sha256:")
    assert meta["medidiff_version"]


def test_manifest_splits_and_labels(nifti_dir, tmp_path):
    from medidiff.dataset import list_scans

    man = tmp_path / "m.csv"
    man.write_text("path,split,label\n" + "\n".join(
        [f"data/scan0.nii.gz,train,0", f"data/scan1.nii.gz,train,1", f"data/scan2.nii.gz,val,0",
         f"data/scan3.nii.gz,train,healthy"]) + "\n")
    got = list_scans(man, ["train"])
    assert sorted(s.path.split("/")[-1] for s in got) == ["scan0.nii.gz", "scan3.nii.gz"]


def test_data_order_sharding_and_augment():
    # disjoint shards per rank within an epoch, full coverage
    n = 8
    seen = []
    for step in range(2):
        for rank in range(2):
            seen += sample_indices(step, n, 2, rank, 2, seed=0)
    assert sorted(seen) == list(range(n))
    data = synthetic_prepared(3)
    cfg = tiny_config().train.augment
    a = make_batch(data, 5, 2, 0, 1, 0, cfg)
    b = make_batch(data, 5, 2, 0, 1, 0, cfg)
    assert np.array_equal(a, b) and a.shape == (2, 1, 16, 16, 16)
    # background stays zero without shift; no flip by default
    x = augment(data.images[0], data.foregrounds[0], type(cfg)(shift=0, probability=1.0), np.random.default_rng(0))
    assert np.all(x[~data.foregrounds[0]] == 0)


def test_kill_between_state_files_keeps_previous_state(tmp_path, monkeypatch):
    """A crash after the new tensor file is written but before its JSON leaves the
    previous, consistent resume state (not a hash mismatch)."""
    from medidiff.train import checkpoint as ckpt

    cfg = tiny_config("train.max_steps=4", "train.checkpoint_every=2", "train.val_every=100")
    Trainer(cfg, synthetic_prepared(2), None, tmp_path / "run", device="cpu", progress=False).run(max_steps=2)
    _, meta_before = ckpt.load_train_state(tmp_path / "run")
    real = ckpt.write_text_atomic

    def crash(path, text):
        if str(path).endswith(ckpt.STATE_META_FILE):
            raise KeyboardInterrupt("killed between the tensor file and its JSON")
        return real(path, text)

    monkeypatch.setattr(ckpt, "write_text_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, synthetic_prepared(2), None, tmp_path / "run", device="cpu", progress=False).run(resume=True)
    monkeypatch.setattr(ckpt, "write_text_atomic", real)
    tensors, meta = ckpt.load_train_state(tmp_path / "run")
    assert meta["step"] == meta_before["step"] == 2 and tensors


def test_warm_start_begins_from_another_models_weights(tmp_path):
    import torch

    from medidiff.model.store import load_model
    from medidiff.train.loop import Trainer
    from train_helpers import synthetic_prepared, tiny_config

    cfg = tiny_config("train.max_steps=2")
    first = Trainer(cfg, synthetic_prepared(n=4), None, tmp_path / "a", device="cpu", progress=False)
    first.train_step(0)
    first.save()
    second = Trainer(cfg, synthetic_prepared(n=4), None, tmp_path / "b", device="cpu", seed=7, progress=False)
    second.warm_start(tmp_path / "a")
    src = load_model(tmp_path / "a").network.state_dict()
    for k, v in second.net.state_dict().items():
        assert torch.equal(v, src[k]), k
    assert second.data_summary["warm_start"]["model_hash"] == load_model(tmp_path / "a").model_hash
    bad = Trainer(tiny_config("model.channels=[16,32]", "model.norm_num_groups=8"), synthetic_prepared(n=4), None,
                  tmp_path / "c", device="cpu", progress=False)
    with pytest.raises(ValueError, match="does not fit"):
        bad.warm_start(tmp_path / "a")


def test_warm_start_a_patch_model_from_a_whole_volume_model(tmp_path):
    """The coordinate channels a patch model adds start at zero: before any step it denoises a
    patch exactly as the whole-volume model it came from."""
    from medidiff.model.store import load_model

    cfg = tiny_config("train.max_steps=2")
    first = Trainer(cfg, synthetic_prepared(n=4), None, tmp_path / "a", device="cpu", progress=False)
    first.train_step(0)
    first.save()
    patch_cfg = tiny_config("train.max_steps=2", "model.patch_size=[8,8,8]")
    second = Trainer(patch_cfg, synthetic_prepared(n=4), None, tmp_path / "b", device="cpu", seed=7, progress=False)
    second.warm_start(tmp_path / "a")
    src = load_model(tmp_path / "a").network.eval()
    net = second.net.eval()
    x = torch.randn(1, 1, 8, 8, 8)
    coords = torch.randn(1, 3, 8, 8, 8)
    t = torch.tensor([100])
    with torch.no_grad():
        assert torch.allclose(net(torch.cat([x, coords], 1), timesteps=t), src(x, timesteps=t), atol=1e-5)


@pytest.mark.parametrize("space", ["scan", "template"])
def test_resume_accepts_a_setting_added_since_at_its_default(tmp_path, space):
    """A checkpoint written before a config option existed resumes (the option at its default changes
    nothing); a real change of a section is still refused. Template space has tuple-valued front-end
    settings that come back from the checkpoint's JSON as lists."""
    import json

    from medidiff.train import checkpoint as ckpt

    cfg = tiny_config("train.max_steps=4", f"preprocess.space={space}")
    first = Trainer(cfg, synthetic_prepared(n=4), None, tmp_path / "run", device="cpu", progress=False)
    first.train_step(0)
    first.save()
    meta_path = tmp_path / "run" / ckpt.STATE_META_FILE
    meta = json.loads(meta_path.read_text())
    meta["config"]["preprocess"].pop("antialias")
    meta_path.write_text(json.dumps(meta))
    again = Trainer(cfg, synthetic_prepared(n=4), None, tmp_path / "run", device="cpu", progress=False)
    assert again.resume() and again.step == first.step
    meta["config"]["model"]["channels"] = [16, 32]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="model section"):
        Trainer(cfg, synthetic_prepared(n=4), None, tmp_path / "run", device="cpu", progress=False).resume()
