import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from medidiff.train.cli import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _app():
    app = typer.Typer()
    app.command("train")(train)

    @app.callback()
    def _cb():
        pass

    return app


def test_dry_run_prints_config_params_memory(tmp_path):
    res = CliRunner().invoke(_app(), ["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "o"),
                                      "--dry-run", "--set", "train.lr=1e-4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout[res.stdout.index("{"):])
    assert rep["config"]["train"]["lr"] == 1e-4
    assert rep["parameters"] > 0 and rep["peak_rss_mib"] > 0 and rep["seconds_per_step"] > 0
    assert not (tmp_path / "o").exists()


def test_bad_override_exit_code(tmp_path):
    res = CliRunner().invoke(_app(), ["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "o"),
                                      "--dry-run", "--set", "model.channels=[12,16]"])
    assert res.exit_code == 2
