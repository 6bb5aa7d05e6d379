"""The model-folder mechanics every kind of model shares: weights + description, hashes, kinds,
pickle refusal."""

import json
import pickle
from pathlib import Path

import pytest
import torch

from medidiff.model.folder import (GENERATOR_FORMAT, LATENT_KIND, META_FILE, MODEL_FILE, PIXEL_FORMAT, PIXEL_KIND,
                                   CheckpointError, load_tensors, model_kind, read_description, read_header,
                                   refuse_pickle, sha256_file, verified_weights, write_description, write_weights)

ROOT = Path(__file__).resolve().parents[2]


def _folder(tmp_path: Path, fmt: str = PIXEL_FORMAT, name: str = "m") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    digest = write_weights(folder, {"w": torch.arange(6.0).reshape(2, 3)}, header={"format": fmt, "config": "{}"})
    write_description(folder, {"format": fmt, "format_version": 1, "model_hash": digest})
    return folder


def test_weights_and_description_round_trip(tmp_path):
    folder = _folder(tmp_path)
    meta = read_description(folder, PIXEL_FORMAT, 1)
    wpath, digest = verified_weights(folder, meta, owner="run")
    assert digest == meta["model_hash"] == sha256_file(folder / MODEL_FILE)
    assert torch.equal(load_tensors(wpath)["w"], torch.arange(6.0).reshape(2, 3))
    assert read_header(wpath) == {"format": PIXEL_FORMAT, "config": "{}"}


def test_edited_weights_are_refused(tmp_path):
    folder = _folder(tmp_path)
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[-1] ^= 0x01
    (folder / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="belong to another generator"):
        verified_weights(folder, read_description(folder, PIXEL_FORMAT, 1), owner="generator")


def test_description_of_another_format_or_a_newer_version_is_refused(tmp_path):
    folder = _folder(tmp_path, GENERATOR_FORMAT)
    with pytest.raises(CheckpointError, match="not a medidiff model description"):
        read_description(folder, PIXEL_FORMAT, 1)
    with pytest.raises(CheckpointError, match="newer than this medidiff understands"):
        read_description(folder, GENERATOR_FORMAT, 0)


def test_pickles_are_named_and_never_loaded(tmp_path):
    (tmp_path / "model.pt").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError, match=r"found pickle-based file\(s\) \['model.pt'\]"):
        read_description(tmp_path, PIXEL_FORMAT, 1)
    with pytest.raises(CheckpointError, match="looks like a pickle"):
        refuse_pickle(tmp_path / "model.pt")


def test_kind_from_the_description(tmp_path):
    assert model_kind(_folder(tmp_path, GENERATOR_FORMAT, "generator")) == LATENT_KIND
    assert model_kind(_folder(tmp_path, PIXEL_FORMAT, "pixel")) == PIXEL_KIND
    assert model_kind(tmp_path / "missing") == PIXEL_KIND  # the pixel loader gives the refusal message
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / META_FILE).write_text("{not json")
    assert model_kind(broken) == PIXEL_KIND


@pytest.mark.parametrize("name, kind", [("brain_t1_4mm", PIXEL_KIND), ("brain_t1_2mm", PIXEL_KIND),
                                        ("generator", LATENT_KIND)])
def test_shipped_models_keep_their_hash_and_kind(name, kind):
    folder = ROOT / "models" / name
    meta = json.loads((folder / META_FILE).read_text())
    assert sha256_file(folder / MODEL_FILE) == meta["model_hash"]
    assert model_kind(folder) == kind
