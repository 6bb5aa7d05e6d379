"""`medidiff baseline` preprocesses the same way installed as in a source checkout: its default
preprocessing ships inside the package (it used to read configs/, which is not in the wheel, and
silently fell back to scan-space preprocessing)."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_default_preprocessing_without_a_checkout(tmp_path):
    shutil.copytree(ROOT / "medidiff", tmp_path / "site" / "medidiff",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    code = ("import medidiff; from medidiff.baselines import load_preprocess_config as f; c = f(None); "
            "print(medidiff.__file__); print(c.space, c.intensity, list(c.grid))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr
    where, settings = out.stdout.splitlines()
    assert where.startswith(str(tmp_path / "site"))  # the copy, not this checkout
    assert settings.split() == ["template", "template_quantiles", "[40,", "48,", "40]"]


def test_package_data_declares_it():
    import tomllib

    from medidiff.baselines import DEFAULT_PREPROCESS

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["medidiff"]
    assert any(fnmatch.fnmatch(f"baselines/{DEFAULT_PREPROCESS}", g) for g in globs)
