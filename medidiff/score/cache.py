"""Opt-in, in-memory reuse of first passes (front end + reconstruction) within one process.

A settings search scores the same calib and val scans many times. Most knobs (structural
term, smoothing, scan-score type, minimum component size, calibration targets) act only
after the reconstruction, which is where the time goes (seconds per scan at 2 mm). Inside
``with first_pass_cache():`` a :class:`~medidiff.score.pipeline.Scorer` reuses the
preprocessed scan and reconstruction of an identical earlier request.

The front end is keyed by the scan's voxels, affine and the front-end settings; each
reconstruction additionally by the weights' hash and every setting that changes it (its t*
levels, K, draws, seed, noise, precision, device). A t* ensemble z-scored per level reuses
the single-t* reconstructions of the same levels. Post-processing settings are deliberately
absent. The baselines share the front end (:func:`preprocessed`), so a benchmark registers each
scan once for every method. Off by default, so normal scoring never keeps scans in memory.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import numpy as np

_ACTIVE: ContextVar["FirstPassCache | None"] = ContextVar("medidiff_first_pass_cache", default=None)


class FirstPassCache:
    """Front ends and reconstructions by key; with ``max_items`` the oldest are dropped first
    (a prefetching batch keeps only the scans in flight)."""

    def __init__(self, max_items: int | None = None) -> None:
        self._items: dict[str, Any] = {}
        self.max_items = max_items
        self.hits = 0
        self.misses = 0

    def fetch(self, key: str, compute: Callable[[], Any]) -> Any:
        """The stored value for ``key``, or ``compute()`` stored under it."""
        if key in self._items:
            self.hits += 1
            return self._items[key]
        self.misses += 1
        value = self._items[key] = compute()
        while self.max_items is not None and len(self._items) > self.max_items:
            self._items.pop(next(iter(self._items)))  # dicts keep insertion order: the oldest first
        return value

    def __len__(self) -> int:
        return len(self._items)


def active_cache() -> FirstPassCache | None:
    return _ACTIVE.get()


@contextmanager
def first_pass_cache(cache: FirstPassCache | None = None, share_front_ends: bool = True) -> Iterator[FirstPassCache]:
    """Reuse first passes inside this block (a fresh cache unless one is given); with
    ``share_front_ends`` also the front end's own memo, across models and grids."""
    from ..frontend.run import frontend_memo

    cache = cache if cache is not None else FirstPassCache()
    token = _ACTIVE.set(cache)
    try:
        with frontend_memo() if share_front_ends else nullcontext():  # bounded in bytes
            yield cache
    finally:
        _ACTIVE.reset(token)


def cached(cache: FirstPassCache | None, key: str | None, compute: Callable[[], Any]) -> Any:
    return compute() if cache is None or key is None else cache.fetch(key, compute)


def scan_key(array: np.ndarray, affine: np.ndarray, settings: dict[str, Any]) -> str:
    """Digest of a scan's voxels + affine and the settings that act on it."""
    h = hashlib.sha256()
    data = np.ascontiguousarray(array)
    h.update(f"{data.dtype.str}{data.shape}".encode())
    h.update(data.tobytes())
    h.update(np.asarray(affine, dtype=np.float64).tobytes())
    h.update(repr(sorted(settings.items())).encode())
    return h.hexdigest()


def preprocessed(volume, pcfg) -> tuple[Any, str | None]:
    """The front end of ``volume`` with ``pcfg``, reused inside ``first_pass_cache()``, and the
    cache key it is stored under (None outside one), which reconstructions extend."""
    from ..preprocess import preprocess

    cache = active_cache()
    key = None if cache is None else scan_key(volume.array, volume.affine, {"preprocess": repr(pcfg)})
    return cached(cache, key, lambda: preprocess(volume, pcfg)), key
