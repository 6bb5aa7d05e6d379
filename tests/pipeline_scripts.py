"""Test-only helper: import a script under pipelines/ as a module (they are scripts, not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def load_pipeline(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, PIPELINES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
