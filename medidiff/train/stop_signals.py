"""SIGTERM/SIGINT during training: noted, not fatal, so a run stops at a step boundary and saves
(used by both trainers)."""

from __future__ import annotations

from typing import Any


def catch_stop_signals(flag: list[int]) -> dict[int, Any]:
    """SIGTERM/SIGINT set ``flag`` so training stops at the next step boundary with a full save
    (a batch scheduler's pre-emption or Ctrl-C never costs more than one step). Main thread only."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, lambda signum, frame: flag.append(signum))
    return previous


def restore_signals(previous: dict[int, Any]) -> None:
    import signal

    for sig, handler in previous.items():
        signal.signal(sig, handler)
