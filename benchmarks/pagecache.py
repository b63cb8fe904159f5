"""How much of a file tree sits in the OS page cache (mincore), to check that a "cold" read
really starts cold after :func:`fib_assets.core.benchmark.drop_file_cache`.

Linux only; every function returns None where the check is not possible.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import numpy as np

_PROT_READ = 1
_MAP_SHARED = 1


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.mincore.restype = ctypes.c_int
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def resident_fraction(path: Path) -> float | None:
    """Fraction (0..1) of the pages of every file under ``path`` that are in the page cache."""
    libc = _libc()
    if libc is None:
        return None
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    page = mmap.PAGESIZE
    total = resident = 0
    failed = ctypes.c_void_p(-1).value
    for f in files:
        size = f.stat().st_size
        if size == 0:
            continue
        fd = os.open(f, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
            if addr in (None, failed):
                return None
            try:
                pages = -(-size // page)
                vec = np.zeros(pages, dtype=np.uint8)
                if libc.mincore(addr, size, vec.ctypes.data) != 0:
                    return None
                total += pages
                resident += int(np.count_nonzero(vec & 1))
            finally:
                libc.munmap(addr, size)
        finally:
            os.close(fd)
    return resident / total if total else 0.0
