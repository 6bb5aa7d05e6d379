"""The one JSON helper set: UTC timestamps and numpy/Path-aware serialisation."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np


def now_utc() -> str:
    """ISO-8601 UTC timestamp to the second (what every result file records)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars/arrays and paths."""
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(obj, indent=indent, default=json_default)
