"""The bulk stages' allocation settings apply inside the block and are restored."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from core import allocation


def _hugepage_enabled() -> bool:
    # The switch returns the previous value, so setting it back reads it.
    previous = allocation._set_madvise_hugepage(True)
    allocation._set_madvise_hugepage(previous)
    return previous


def test_small_pages_switches_and_restores():
    if allocation._set_madvise_hugepage is None:
        pytest.skip("this numpy has no huge page switch")
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this Arrow build has no jemalloc")
    pool_before = pa.default_memory_pool().backend_name
    hugepage_before = _hugepage_enabled()

    with pytest.raises(RuntimeError):
        with allocation.small_pages():
            with allocation.small_pages():
                inner_pool = pa.default_memory_pool().backend_name
            outer_pool = pa.default_memory_pool().backend_name
            outer_hugepage = _hugepage_enabled()
            raise RuntimeError("leave the block early")

    assert inner_pool == "jemalloc"
    assert outer_pool == "jemalloc"
    assert outer_hugepage is False
    assert pa.default_memory_pool().backend_name == pool_before
    assert _hugepage_enabled() == hugepage_before


def test_small_pages_arrays_unchanged():
    # Memory from the switched pools must behave like any other.
    with allocation.small_pages():
        values = np.arange(1_000_000, dtype=np.int64) * 3
        table = pa.table({"x": values})
    assert int(pa.compute.sum(table["x"]).as_py()) == int(values.sum())
    assert table["x"][999_999].as_py() == 2_999_997
