"""A disk cache of real scans on a model's grid (front end + preprocessing run once per scan).

Benchmarks of a generator read the same real heads many times (reference set, training set,
memorisation check, usefulness arms); the front end (brain extraction, N4, registration) costs
10-20 s per head on one CPU thread. ``preprocess_cached`` keeps each result as a safetensors file
keyed by the scan's path, size and modification time and by the preprocessing config, so a
changed scan or setting is preprocessed again and nothing is unpickled. A scan the front end
refuses (e.g. its registration QC) is remembered as ``KEY.failed.json`` and refused again at once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np


def _key(path: Path, pcfg) -> str:
    from ..jsonutil import json_default

    st = path.stat() if path.is_file() else None
    ident = {"path": str(path.resolve()), "size": st.st_size if st else None,
             "mtime": int(st.st_mtime) if st else None, "preprocess": pcfg.to_dict()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=json_default).encode()).hexdigest()[:24]


def preprocess_cached(path: str | Path, pcfg, cache_dir: str | Path | None,
                      log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image, foreground) of one scan (file or DICOM folder) on ``pcfg``'s grid, model units."""
    from ..preprocess import preprocess
    from ..dataset import list_scans

    path = Path(path)
    cpath = Path(cache_dir) / f"{_key(path, pcfg)}.safetensors" if cache_dir is not None else None
    if cpath is not None and cpath.is_file():
        from safetensors.torch import load_file

        from ..model.folder import refuse_pickle

        refuse_pickle(cpath)
        t = load_file(str(cpath))
        return t["image"].numpy(), t["foreground"].numpy().astype(bool)
    failed = cpath.with_suffix(".failed.json") if cpath is not None else None
    if failed is not None and failed.is_file():  # the front end refused this scan before: do not rerun it
        raise ValueError(json.loads(failed.read_text()).get("error", "preprocessing failed before"))
    sources = list_scans(path)
    if len(sources) != 1:
        raise ValueError(f"{path}: expected one scan, found {len(sources)}")
    if log:
        log(f"preprocessing {path.name}")
    try:
        pp = preprocess(sources[0].load(), pcfg)
    except Exception as exc:
        if failed is not None:
            from ..io.atomic import write_text_atomic

            failed.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(failed, json.dumps({"path": str(path), "error": f"{type(exc).__name__}: {exc}"[:500]}))
        raise
    image, fg = np.asarray(pp.image, np.float32), np.asarray(pp.foreground, bool)
    if cpath is not None:
        import torch
        from safetensors.torch import save_file

        from ..io.atomic import atomic_path

        cpath.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cpath) as tmp:
            save_file({"image": torch.from_numpy(image), "foreground": torch.from_numpy(fg.astype(np.uint8))}, str(tmp))
    return image, fg
