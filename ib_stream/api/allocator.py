"""Process-wide memory tuning of the service: freed memory goes back to the system.

A request's work runs on worker threads, and glibc gives each thread that contends for the allocator an
arena of its own (up to 8 per core); memory freed in an arena is kept there for that thread. After a few
large answers the process then holds hundreds of MB it no longer uses. Capping the arenas at two
(`mallopt(M_ARENA_MAX, 2)`, the setting `MALLOC_ARENA_MAX=2` makes) keeps the peak of a heavy request
close to what it allocates (measured in bench/RESULTS.md, "Abuse"). Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (before the worker threads start); True when it took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(arenas)))
    log.debug("malloc arenas capped at %d: %s", arenas, done)
    return done
