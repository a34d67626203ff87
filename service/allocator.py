"""The C allocator settings the server applies at start: a fixed glibc mmap threshold and few arenas.

Each slice makes buffers of a few hundred KiB to tens of MiB (the packed lines, the zero-filled
matrix, onnxruntime's feeds and outputs, the response). glibc serves allocations above its mmap
threshold with their own mapping, unmapped on free, but it raises that threshold to the size of each
such block freed (up to 32 MiB), after which blocks of that size come from the arenas and stay
there. Setting the threshold explicitly turns that adjustment off (mallopt(3)).

glibc also gives each new thread its own arena, up to 8 per core. gRPC's thread pools start threads
as load comes and goes, so a fresh server keeps adding arenas, each holding some freed memory, over
its first few hundred slices, and its resident memory grows until the limit is reached
(docs/benchmarks.md measures both). A small arena limit bounds that growth; the threads that share
an arena hold its lock only for the allocation itself, and the compute runs in onnxruntime.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # <malloc.h>
M_ARENA_MAX = -8


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache
def _libc():
    """The C library this process runs on, if it is glibc (mallopt and mallinfo2), else None. Looked up
    once: the metrics gauge calls mallinfo() at every scrape."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has mallopt as a no-op stub)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _MallInfo2
    return libc


def configure_malloc(mmap_threshold: int, arena_max: int) -> dict[str, bool]:
    """Fix glibc's mmap threshold at `mmap_threshold` bytes and its arena count at `arena_max`
    (0 leaves glibc's default for either). Returns which settings were applied."""
    applied = {"mmap_threshold": False, "arena_max": False}
    wanted = {"mmap_threshold": (M_MMAP_THRESHOLD, mmap_threshold), "arena_max": (M_ARENA_MAX, arena_max)}
    if not any(v > 0 for _, v in wanted.values()):
        return applied
    libc = _libc()
    if libc is None:
        log.warning("not glibc: DNIRECON_MALLOC_MMAP_THRESHOLD / DNIRECON_MALLOC_ARENA_MAX have no effect")
        return applied
    for name, (param, value) in wanted.items():
        if value > 0:
            applied[name] = libc.mallopt(param, int(value)) == 1
            if not applied[name]:
                log.warning("mallopt refused %s=%d; glibc keeps its default", name, value)
    return applied


def mallinfo() -> dict[str, int] | None:
    """glibc's mallinfo2() over all arenas, in bytes: `in_use` (arena blocks in use), `free` (arena
    bytes free but kept), `mapped` (blocks in their own mappings); None where unavailable."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    mi = libc.mallinfo2()
    return {"in_use": int(mi.uordblks), "free": int(mi.fordblks), "mapped": int(mi.hblkhd)}
