"""pipelines/train_model.py: the bundled detection models' training script, on a tiny config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pipeline_scripts import load_pipeline

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "train"))  # train_helpers (import-mode=importlib)

from medidiff.io.nifti import write_nifti  # noqa: E402
from train_helpers import blob_volume  # noqa: E402


@pytest.fixture
def manifest(tmp_path):
    rows = ["scan_id,path,split,label"]
    for i, split in enumerate(["train", "train", "train", "calib"]):
        write_nifti(blob_volume(i), tmp_path / "data" / f"scan{i}.nii.gz")
        rows.append(f"scan{i},scan{i}.nii.gz,{split},0")
    (tmp_path / "data" / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "data" / "labels.csv"


def test_defaults_are_the_4mm_model_and_its_recipe(monkeypatch):
    """Without options it (re)trains the quick-start 4 mm model from its recipe."""
    train_model = load_pipeline("train_model")
    seen = {}
    monkeypatch.setattr(train_model, "measure", lambda cfg, data, *a, **k: seen.update(grid=cfg.preprocess.grid,
                                                                                       data=data) or {})
    assert train_model.main(["--measure", "1"]) == 0
    assert tuple(seen["grid"]) == (40, 48, 40) and seen["data"] == ROOT / "sample_data" / "labels.csv"
    assert (ROOT / "configs" / "brain_t1_4mm.yaml").is_file() and (ROOT / "models" / "brain_t1_4mm").is_dir()


def test_trains_and_ships_ema_weights_only(manifest, tmp_path):
    train_model = load_pipeline("train_model")
    out = tmp_path / "run"
    assert train_model.main(["--config", str(ROOT / "configs" / "tiny.yaml"), "--data", str(manifest),
                             "--out", str(out), "--no-fit-steps", "--threads", "1", "--no-progress",
                             "--set", "train.max_steps=2", "--set", "train.checkpoint_every=1"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["steps"] == 2 and meta["weights"] == {"ema": True, "raw": False}
    from safetensors.torch import load_file

    # like the shipped models: only the EMA network, no raw weights or optimizer state
    assert {k.split(".")[0] for k in load_file(str(out / "model.safetensors"))} == {"ema"}
