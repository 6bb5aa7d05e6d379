"""Overlap the front end of the next scan with the network of the current one (GPU scoring).

On a GPU the network takes a fraction of the time of the CPU-bound work before it (reading the
series, brain extraction, N4, registration), so scoring scans strictly one after the other leaves
the GPU idle for most of each scan. With prefetching, one background thread reads scan i+1 and runs
its front end while scan i is on the GPU; the front end reaches the scorer through a small
first-pass cache (:mod:`medidiff.score.cache`), so nothing is computed twice and the maps are the
ones sequential scoring writes. On a CPU the two would compete for the same cores, so
``medidiff score`` prefetches only when it scores on a GPU.

Errors stay with their scan: a file that fails to load raises when the batch reaches it, and a
front end that fails ahead of time is simply run again (and reported) by the scorer.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

from ..score.cache import FirstPassCache, first_pass_cache

# cache entries kept: per scan one front end and one reconstruction per t* level, for the scan being
# scored and the one read ahead (older ones are dropped first)
CACHE_ITEMS = 16


class PrefetchedRef:
    """A scan reference whose ``load()`` returns the volume read ahead, or raises what reading met."""

    def __init__(self, ref: Any, volume: Any = None, error: BaseException | None = None) -> None:
        self._ref, self._volume, self._error = ref, volume, error

    def load(self) -> Any:
        if self._error is not None:
            raise self._error
        volume, self._volume = self._volume, None  # handed over once: the batch must not keep it
        return volume if volume is not None else self._ref.load()

    def __getattr__(self, name: str) -> Any:  # scan_id, source, format, shape, ...
        return getattr(self._ref, name)


def _read_ahead(ref: Any, warm: Callable[[Any], Any]) -> PrefetchedRef:
    try:
        volume = ref.load()
    except Exception as exc:  # raised again, on the batch's thread, when the batch reaches this scan
        return PrefetchedRef(ref, error=exc)
    try:
        warm(volume)
    except Exception:  # the scorer runs the front end again and records the reason with the scan
        pass
    return PrefetchedRef(ref, volume)


def prefetching(refs: Iterable[Any], warm: Callable[[Any], Any]) -> Iterator[PrefetchedRef]:
    """``refs`` in order; while the caller scores one, the next is read and ``warm``-ed (its front end
    run into the active first-pass cache) on a background thread."""
    refs = list(refs)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medidiff-prefetch") as pool:
        def submit(ref: Any) -> Future:
            # a fresh copy of this thread's context: the worker sees the same first-pass cache
            return pool.submit(contextvars.copy_context().run, _read_ahead, ref, warm)

        ahead = submit(refs[0]) if refs else None
        for i in range(len(refs)):
            current = ahead.result()
            ahead = submit(refs[i + 1]) if i + 1 < len(refs) else None
            yield current


def prefetch_cache() -> Any:
    """The bounded first-pass cache a prefetching batch runs inside."""
    return first_pass_cache(FirstPassCache(max_items=CACHE_ITEMS), share_front_ends=False)
