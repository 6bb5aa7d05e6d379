import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from train_helpers import synthetic_prepared, tiny_config
from medidiff.model.folder import CheckpointError
from medidiff.model.store import load_model, save_model
from medidiff.train.loop import Trainer


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = tiny_config("train.max_steps=2")
    Trainer(cfg, synthetic_prepared(2), None, out, device="cpu", progress=False).run()
    return out


@pytest.fixture
def run_dir(trained_run, tmp_path):
    import shutil

    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def test_round_trip(run_dir):
    m = load_model(run_dir, "cpu")
    assert not m.network.training
    assert m.model_hash == json.loads((run_dir / "model.json").read_text())["model_hash"]
    assert m.preprocess_config.grid == (16, 16, 16)
    sched = m.scheduler_factory("ddim")
    assert sched.num_train_timesteps == 1000
    from safetensors.torch import load_file

    ema = {k[4:]: v for k, v in load_file(str(run_dir / "model.safetensors")).items() if k.startswith("ema.")}
    for k, v in m.network.state_dict().items():
        assert torch.equal(v, ema[k])
    x = torch.zeros(1, 1, 16, 16, 16)
    assert m.network(x, timesteps=torch.tensor([10])).shape == x.shape
    raw = load_model(run_dir, "cpu", weights="raw")
    assert any(not torch.equal(a, b) for a, b in zip(raw.network.state_dict().values(), m.network.state_dict().values()))


def test_hash_mismatch_refused(run_dir):
    p = run_dir / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="hash"):
        load_model(run_dir)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_refused_without_executing(tmp_path, run_dir):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": _Evil(marker)})
    # 1) a pickle disguised as the weights file, with model.json's hash updated to match
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "model.safetensors").write_bytes(payload)
    meta = json.loads((run_dir / "model.json").read_text())
    from medidiff.model.folder import sha256_file

    meta["model_hash"] = sha256_file(evil / "model.safetensors")
    (evil / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(evil)
    # 2) a torch.save checkpoint named like a checkpoint, no model.json
    evil2 = tmp_path / "evil2"
    evil2.mkdir()
    (evil2 / "model.pt").write_bytes(payload)
    torch.save({"x": _Evil(marker)}, evil2 / "checkpoint.pth")
    with pytest.raises(CheckpointError, match="refuses"):
        load_model(evil2)
    # 3) a torch.save zip in place of model.safetensors (hash matching)
    evil3 = tmp_path / "evil3"
    evil3.mkdir()
    torch.save({"x": _Evil(marker)}, evil3 / "model.safetensors")
    meta["model_hash"] = sha256_file(evil3 / "model.safetensors")
    (evil3 / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(evil3)
    assert not marker.exists()


def test_not_a_model_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a medidiff model folder"):
        load_model(tmp_path)
