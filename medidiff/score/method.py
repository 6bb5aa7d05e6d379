"""A model's scoring method: the settings chosen for it on validation, stored apart from any calibration.

``models/<name>/method.json`` records *how* a model scores (t*, draws, map and scan-score
settings: a full :class:`~medidiff.score.config.ScoreConfig`) and where that choice came from
(``provenance``: what it was chosen on, when, by what). A calibration (``calibration.json``)
records thresholds measured for one set of settings on one device and precision; it can be
redone on anyone's healthy scans, the method should not change when it is.

* ``medidiff calibrate`` starts from the method; ``--set`` changes it only explicitly, and every
  setting that then differs from the method is printed.
* ``medidiff score``, the report and the benchmarks read the same record
  (:func:`load_method`); ``run.json["method"]`` says which settings differ from it.
* Settings searches write a new method for (re)trained weights with :func:`write_method`.

The file is plain JSON (never pickled), written atomically::

    {"format": "medidiff-method", "format_version": 1,
     "score_config": {...}, "method_hash": "...", "model_hash": "sha256:..." | null,
     "provenance": {"chosen_on": "...", "date": "YYYY-MM-DD", ...}}
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.atomic import write_text_atomic
from .config import ScoreConfig

METHOD_FILE = "method.json"
FORMAT = "medidiff-method"
FORMAT_VERSION = 1


class MethodError(ValueError):
    """method.json is unreadable, malformed or names unknown settings."""


@dataclass
class Method:
    score_config: dict[str, Any]  # canonical ScoreConfig.to_dict()
    provenance: dict[str, Any] = field(default_factory=dict)
    model_hash: str | None = None  # the weights it was chosen for (None: not recorded)
    path: Path | None = None

    @property
    def config(self) -> ScoreConfig:
        return ScoreConfig.from_dict(self.score_config)

    def settings_hash(self) -> str:
        """The settings hash without runtime (device, precision): identifies the method itself."""
        return self.config.hash()

    def describe(self) -> str:
        """One short phrase for logs: the file and what it was chosen on."""
        where = self.provenance.get("chosen_on")
        return f"{self.path or METHOD_FILE}" + (f", chosen on {where}" if where else "")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "score_config": self.score_config,
                "method_hash": self.settings_hash(), "model_hash": self.model_hash,
                "provenance": self.provenance}

    def for_run(self, cfg: ScoreConfig) -> dict[str, Any]:
        """``run.json["method"]``: the record and every setting this run changes."""
        return {"file": METHOD_FILE, "method_hash": self.settings_hash(), "provenance": self.provenance,
                "differs": {k: {"method": a, "now": b} for k, a, b in method_diff(self.score_config, cfg)}}


def _today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).date().isoformat()


def write_method(model_dir: str | Path, score_config: ScoreConfig | dict[str, Any], provenance: dict[str, Any],
                 *, model_hash: str | None = None) -> Path:
    """Write ``model_dir/method.json`` (atomically) and return its path.

    ``score_config``: the chosen settings (a ScoreConfig or its dict; validated, numbers made
    canonical). ``provenance``: must say what the settings were ``chosen_on`` (e.g. "sample_data
    val split, 20 healthy + 20 lesioned; thresholds from calib"); ``date`` (UTC, ISO) is added
    when absent. ``model_hash``: the weights the search ran with (``LoadedModel.model_hash``)."""
    cfg = score_config if isinstance(score_config, ScoreConfig) else ScoreConfig.from_dict(score_config)
    if not isinstance(provenance, dict) or not str(provenance.get("chosen_on", "")).strip():
        raise MethodError("write_method: provenance must be a dict that says what the settings were chosen on "
                          "(provenance['chosen_on'], e.g. 'sample_data val split')")
    prov = dict(provenance)
    prov.setdefault("date", _today())
    method = Method(score_config=cfg.to_dict(), provenance=prov, model_hash=model_hash)
    path = Path(model_dir) / METHOD_FILE
    write_text_atomic(path, json.dumps(method.to_json(), indent=2, default=str) + "\n")
    return path


def load_method(model_dir: str | Path) -> Method | None:
    """The method of ``model_dir``; None when the folder has no method.json; :class:`MethodError`
    (one line: file, reason, what to do) when it is unreadable or invalid."""
    path = Path(model_dir) / METHOD_FILE
    if not path.is_file():
        return None
    fix = "restore it from the model's release, or delete it to score with the calibration's or default settings"
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise MethodError(f"{path}: not readable JSON ({exc}); {fix}") from exc
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise MethodError(f"{path}: not a medidiff method file (format {found!r}, expected {FORMAT!r}); {fix}")
    if d.get("format_version") != FORMAT_VERSION:
        raise MethodError(f"{path}: method format {d.get('format_version')!r} is not {FORMAT_VERSION} "
                          f"(written by another medidiff version); {fix}")
    try:
        cfg = ScoreConfig.from_dict(d.get("score_config"))
    except (TypeError, ValueError) as exc:
        raise MethodError(f"{path}: invalid settings ({exc}); {fix}") from exc
    prov = d.get("provenance") or {}
    if not isinstance(prov, dict):
        raise MethodError(f"{path}: provenance must be a JSON object; {fix}")
    return Method(score_config=cfg.to_dict(), provenance=prov, model_hash=d.get("model_hash"), path=path)


def method_diff(method_config: dict[str, Any], cfg: ScoreConfig | dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, method's value, this value) for every setting that differs (numbers compared
    canonically; ``batch_size`` is included: it changes speed, not maps, but it is a setting)."""
    a = ScoreConfig.from_dict(method_config).to_dict()
    b = (cfg if isinstance(cfg, ScoreConfig) else ScoreConfig.from_dict(cfg)).to_dict()
    return [(k, a[k], b[k]) for k in a if a[k] != b[k]]


def format_diff(diff: list[tuple[str, Any, Any]]) -> list[str]:
    return [f"  {k}: method {json.dumps(a)}, now {json.dumps(b)}" for k, a, b in diff]
