"""`import transfer` caps glibc's malloc arenas at one per core (transfer.allocator)."""

import os
import subprocess
import sys

import pytest

THREADS = 8
# Each of 8 threads allocates (a small numpy array comes from malloc, in the thread's
# arena), then glibc's malloc_stats prints one "Arena N:" block per arena to stderr.
SCRIPT = f"""
import ctypes, sys, threading
if sys.argv[1] == "transfer":
    import transfer
import numpy as np
barrier = threading.Barrier({THREADS})
kept = []
def work():
    barrier.wait()
    kept.append(np.ones(512))
threads = [threading.Thread(target=work) for _ in range({THREADS})]
for thread in threads: thread.start()
for thread in threads: thread.join()
ctypes.CDLL(None).malloc_stats()
"""


def arenas(*args):
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, check=True
    )
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_import_transfer_caps_malloc_arenas_at_one_per_core():
    cores = len(os.sched_getaffinity(0))
    assert arenas("plain") > cores  # glibc's default: a new arena per thread, up to 8 per core
    assert 1 <= arenas("transfer") <= cores
