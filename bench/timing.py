"""Timing helpers shared by the benchmark scripts (the ArcticDB peer imports it too, from its own venv)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], reps: int, warmup: int) -> tuple[float, list[float], Any]:
    """Run `fn` `warmup` times untimed, then `reps` times; return (median s, all times s, last result)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    out: Any = None
    for _ in range(reps):
        out = None
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times, out
