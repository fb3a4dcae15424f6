"""Process-wide memory tuning of the service: memory freed after a heavy request goes back to the system.

A request's work runs on worker threads, and glibc gives each thread that contends for the allocator an
arena of its own (up to 8 per core); memory freed in an arena is kept there for that thread. After a few
large answers the process then holds hundreds of MB it no longer uses; Arrow's own pool (mimalloc, kept
because it reads faster than malloc here) likewise keeps freed pages. Two measures keep the resident
size close to what is in use (measured in bench/RESULTS.md, "Abuse"):

- `limit_arenas`: at most two glibc arenas (`mallopt(M_ARENA_MAX, 2)`, what `MALLOC_ARENA_MAX=2` does);
- `release_memory`: returns the free pages of Arrow's pool (`release_unused`) and of malloc
  (`malloc_trim`) to the system; the service calls it every few seconds (`trim_periodically`), a few ms
  of a worker thread.

Elsewhere than glibc `limit_arenas` and `release_memory` do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from functools import cache
from typing import Final

import pyarrow as pa

log = logging.getLogger(__name__)

M_ARENA_MAX: Final = -8  # glibc's malloc.h
ARENAS: Final = 2
TRIM_SECONDS: Final = 5.0


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (before the worker threads start); True when it took effect."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    done = bool(mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(arenas)))
    log.debug("malloc arenas capped at %d: %s", arenas, done)
    return done


def release_memory() -> bool:
    """Give the free memory of Arrow's pool and of malloc back to the system; True when malloc_trim ran."""
    pa.default_memory_pool().release_unused()
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(ctypes.c_size_t(0))
    return True


async def trim_periodically(every_seconds: float = TRIM_SECONDS) -> None:
    """Run `release_memory` off the event loop every `every_seconds`, until cancelled."""
    while True:
        await asyncio.sleep(every_seconds)
        await asyncio.to_thread(release_memory)
