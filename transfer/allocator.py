"""The C library's memory allocator (glibc's malloc): fewer arenas, and freed memory
handed back between a run's stages. Both are no-ops where the C library is not glibc.

glibc gives threads up to 8 arenas per core, each keeping what was freed in it for
reuse; TensorFlow runs dozens of threads, and the freed memory they keep adds up.
Capping the arenas at one per core (what MALLOC_ARENA_MAX does; Heroku recommends 2
for threaded Ruby servers, for the same reason) lowers a run's peak memory at no
cost in time (docs/benchmarks: the memory rows of scripts/benchmark.py).
"""

import ctypes
import gc
import os

M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def _glibc_function(name):
    try:
        return getattr(ctypes.CDLL(None), name, None)
    except OSError:
        return None


def limit_arenas():
    """One malloc arena per core, unless MALLOC_ARENA_MAX says otherwise. Call it
    before TensorFlow starts its threads: arenas that exist stay."""
    mallopt = _glibc_function("mallopt")
    if mallopt is None or "MALLOC_ARENA_MAX" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mallopt(M_ARENA_MAX, max(1, cores or 1))


def return_freed_memory():
    """Give the memory freed since the last call back to the system. glibc keeps what
    was freed for reuse, and between a run's stages that is a lot: after phase 2, its
    optimizer and traced steps."""
    gc.collect()
    trim = _glibc_function("malloc_trim")
    if trim is not None:
        trim(0)
