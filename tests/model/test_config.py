import pytest
import torch

from medidiff.model.config import Config, ConfigError, apply_overrides, load_config
from medidiff.model.diffusion import add_noise, build_scheduler, predict_eps, predict_x0, training_target
from medidiff.model.network import build_network

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_bundled_configs_load():
    for path in sorted(CONFIGS.glob("*.yaml")):  # every shipped config loads and round-trips
        if path.name.startswith("generator"):
            continue  # the generator's config has its own loader (tests/generator)
        cfg = load_config(path)
        assert cfg.model.channels
        d = cfg.to_dict()
        assert Config.from_dict(d).to_dict() == d


def test_overrides_types():
    cfg = load_config(CONFIGS / "tiny.yaml", ["train.lr=1e-4", "model.channels=[16,32]",
                                              "train.augment.flip_lr=true", "diffusion.schedule=cosine"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.channels == (16, 32)
    assert cfg.train.augment.flip_lr is True
    assert cfg.diffusion.schedule == "cosine"
    d = apply_overrides({}, ["preprocess.grid=[8,8,8]"])
    assert d == {"preprocess": {"grid": [8, 8, 8]}}


@pytest.mark.parametrize("override,msg", [
    (["model.channels=[12,16]"], "divisible by model.norm_num_groups"),
    (["model.attention_levels=[true]"], "attention_levels"),
    (["train.lrr=1"], "unknown option"),
    (["preprocess.grid=[15,16,16]"], "divisible by 2"),
    (["diffusion.schedule=quadratic"], "diffusion.schedule"),
    (["diffusion.prediction_type=x0"], "prediction_type"),
    (["bogus.key=1"], "unknown config section"),
    (["trainlr"], "section.key=value"),
    (["preprocess.modality=pet"], "modality"),
])
def test_validation_errors(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(CONFIGS / "tiny.yaml", override)


def test_missing_file_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "bad.yaml")


def test_network_forward_tiny():
    cfg = load_config(CONFIGS / "tiny.yaml")
    net = build_network(cfg.model)
    x = torch.randn(2, 1, 16, 16, 16)
    y = net(x, timesteps=torch.tensor([1, 500]))
    assert y.shape == x.shape


@pytest.mark.parametrize("schedule", ["linear_beta", "scaled_linear_beta", "cosine"])
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_predict_x0_inverts_add_noise(schedule, pred):
    cfg = load_config(CONFIGS / "tiny.yaml", [f"diffusion.schedule={schedule}", f"diffusion.prediction_type={pred}"])
    for kind in ("ddpm", "ddim"):
        sched = build_scheduler(cfg.diffusion, kind)
        assert sched.prediction_type == pred and sched.clip_sample is False
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 8, 8, 8, generator=g) * 1.5  # values > 1 must survive (no clipping)
    eps = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 400, 990])
    x_t = add_noise(sched, x0, eps, t)
    ref = sched.add_noise(x0.clone(), eps, t)
    torch.testing.assert_close(x_t, ref, atol=1e-5, rtol=1e-5)
    target = training_target(sched, x0, eps, t)  # a perfect network output
    torch.testing.assert_close(predict_x0(target, x_t, t, sched), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(predict_eps(target, x_t, t, sched), eps, atol=1e-3, rtol=1e-3)
    if pred == "v_prediction":
        torch.testing.assert_close(target, sched.get_velocity(x0, eps, t), atol=1e-5, rtol=1e-5)
