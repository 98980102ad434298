"""Shared pytest setup: where the public data sets are, and the sample plant run."""

from __future__ import annotations

# Before anything loads numpy or torch: `core` fixes which vector code they run.
import core  # noqa: F401, I001

import os
from pathlib import Path

import pytest

DATA_VARIABLE = "TGLOC_DATA"


def data_folder(name: str) -> Path:
    """Return `$TGLOC_DATA/name`, or skip the test with the reason."""
    root = os.environ.get(DATA_VARIABLE)
    if not root:
        pytest.skip(f"{DATA_VARIABLE} is not set; point it at the folder holding "
                    f"the public data sets to run this test")
    folder = Path(root) / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not found ({DATA_VARIABLE}={root})")
    return folder
