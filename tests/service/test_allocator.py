"""The server's allocator settings, each in a fresh interpreter (mallopt is process-wide):
- with the mmap threshold pinned, a large block freed and allocated again gets its own mapping
  (returned to the OS on free); with 0, glibc's dynamic threshold moves it into an arena, where it stays;
- with the arena limit, threads alive at once share that many arenas; with 0, each gets its own."""

import json
import subprocess
import sys

import pytest

from service.allocator import mallinfo

THRESHOLD_PROBE = """
import json, sys
from service.allocator import configure_malloc, mallinfo
applied = configure_malloc(int(sys.argv[1]), 0)
a = bytearray(4 << 20); del a          # freeing a mapped block raises glibc's dynamic threshold
before = mallinfo()["mapped"]
b = bytearray(4 << 20)                 # the same size again
print(json.dumps({"applied": applied, "mapped": mallinfo()["mapped"] - before}))
"""

ARENA_PROBE = """
import ctypes, json, sys, threading
from service.allocator import configure_malloc
applied = configure_malloc(0, int(sys.argv[1]))
bufs, gate = [], threading.Barrier(4)
def work():
    gate.wait()                        # all four threads alive at once
    bufs.append(bytearray(64 << 10))   # each thread's first malloc picks its arena
    gate.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
sys.stdout.flush()
ctypes.CDLL(None).malloc_stats()       # one "Arena N:" block per arena, on stderr
print(json.dumps(applied))
"""


def _run(probe: str, value: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", probe, str(value)], check=True, capture_output=True, text=True)


needs_glibc = pytest.mark.skipif(mallinfo() is None, reason="needs glibc's mallinfo2")


@needs_glibc
def test_pinned_threshold_keeps_large_blocks_in_their_own_mappings():
    pinned = json.loads(_run(THRESHOLD_PROBE, 128 * 1024).stdout)
    assert pinned["applied"] == {"mmap_threshold": True, "arena_max": False}
    assert pinned["mapped"] >= 4 << 20  # the second 4 MiB block is a mapping of its own
    dynamic = json.loads(_run(THRESHOLD_PROBE, 0).stdout)
    assert dynamic["applied"] == {"mmap_threshold": False, "arena_max": False}
    assert dynamic["mapped"] < 4 << 20  # glibc moved it into an arena after the first free


@needs_glibc
def test_arena_limit_makes_threads_share_arenas():
    def arenas(limit: int) -> int:
        out = _run(ARENA_PROBE, limit)
        return sum(line.startswith("Arena ") for line in out.stderr.splitlines())

    assert arenas(2) == 2
    assert arenas(0) == 5  # the main arena and one per thread


def test_the_settings_are_validated():
    from dnirecon.errors import ConfigError
    from service.config import settings_from

    s = settings_from(None, {})
    assert (s.malloc_mmap_threshold, s.malloc_arena_max) == (128 * 1024, 2)
    s = settings_from(None, {"DNIRECON_MALLOC_MMAP_THRESHOLD": "0", "DNIRECON_MALLOC_ARENA_MAX": "0"})
    assert (s.malloc_mmap_threshold, s.malloc_arena_max) == (0, 0)
    with pytest.raises(ConfigError, match="DNIRECON_MALLOC_MMAP_THRESHOLD / --malloc-mmap-threshold is -1"):
        settings_from(None, {"DNIRECON_MALLOC_MMAP_THRESHOLD": "-1"})
    with pytest.raises(ConfigError, match="DNIRECON_MALLOC_ARENA_MAX / --malloc-arena-max is -2"):
        settings_from(None, {"DNIRECON_MALLOC_ARENA_MAX": "-2"})
