"""Memory allocation for the bulk stages: no transparent huge pages.

Arrow's default memory pool (mimalloc in pyarrow 26 on Linux) and numpy's large
arrays came from transparent huge pages. On the 2-core virtual machine of
docs/benchmarks.md, faulting those pages in was slow: perf showed more than half
of the CPU time of a clean 1 M event ingest in the kernel, zeroing huge pages.
Switching both off for the bulk stages measured, in CPU seconds:

- ingest of 1 M events: 1.0 to 1.4 from Parquet and 2.2 to 2.6 from CSV with the
  defaults, 0.55 and 1.0 with jemalloc as Arrow's pool;
- binning 5 M events over 1,000 devices: 2.6 to 2.9 with numpy's huge pages,
  1.3 to 1.8 without.

NOTE: measured on that machine only. Where huge pages fault in fast, small pages
may cost a little instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

try:
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:
    # The switch is private in numpy 2.4, so a later numpy may drop it, and then
    # numpy keeps its huge pages.
    _set_madvise_hugepage = None

_lock = threading.Lock()
_users = 0
_previous_pool: pa.MemoryPool | None = None
_previous_hugepage = True


@contextmanager
def small_pages() -> Iterator[None]:
    """Allocate Arrow memory from jemalloc and numpy memory without huge pages.

    Both settings are process-wide, so threads share them: the first block in
    switches them and the last one out restores them. Arrow builds without
    jemalloc (macOS, Windows) keep their default pool.
    """
    global _users, _previous_pool, _previous_hugepage
    with _lock:
        if _users == 0:
            _previous_pool = _switch_pool()
            if _set_madvise_hugepage is not None:
                _previous_hugepage = _set_madvise_hugepage(False)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                if _previous_pool is not None:
                    pa.set_memory_pool(_previous_pool)
                if _set_madvise_hugepage is not None:
                    _set_madvise_hugepage(_previous_hugepage)
                _previous_pool = None


def _switch_pool() -> pa.MemoryPool | None:
    """Make jemalloc Arrow's default pool; return the one it replaced, if any."""
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:
        return None
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    return previous
