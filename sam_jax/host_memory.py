"""Freed host memory kept for reuse, in the processes our commands start (glibc's malloc, Linux).

XLA's CPU runtime allocates a program's scratch afresh at every call (373 MB for one 256² slice through LiteMedSAM's
encoder), and PyTorch each large tensor. glibc hands any block of 32 MB or more, and any large block of a worker
thread's arena, straight back to the kernel when it is freed, so the next call faults every page in again, zero-filled
by the kernel: 115,000 page faults and 0.26 s of system time per LiteMedSAM slice on 2 EPYC cores, a fifth of the wall
time. One arena that never returns memory to the kernel serves the same blocks again without a fault.

The cost: the process keeps its peak footprint until it ends (a LiteMedSAM LoRA step at batch 4 peaks at 11.6 GB
either way). A library does not change its host's allocator when imported; the applications call this first.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt's parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

RETAIN = (
    (M_ARENA_MAX, 1),  # every thread allocates from the main arena, which grows in place; a worker thread's own
    # arena sends large blocks to mmap however it is set
    (M_MMAP_MAX, 0),  # no block gets its own mapping, whose pages go back to the kernel on free
    (M_TRIM_THRESHOLD, -1),  # the top of the heap is never given back (-1 reads as SIZE_MAX)
)


def retain_freed_memory() -> bool:
    """Sets glibc's malloc to keep what is freed for reuse (see the module's docstring); True where it did, False
    where the C library is not glibc (macOS, musl), which is left as it is. Call it before JAX starts its threads."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    return all(libc.mallopt(option, value) == 1 for option, value in RETAIN)
