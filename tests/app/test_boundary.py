"""The engine in core/ must import without Streamlit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]

CHECK = """
import importlib, pkgutil, sys
import core
names = sorted(m.name for m in pkgutil.iter_modules(core.__path__, "core."))
for name in names:
    importlib.import_module(name)
print(",".join(names))
assert "streamlit" not in sys.modules, "streamlit was imported"
"""


def test_core_imports_without_streamlit():
    result = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=REPOSITORY, capture_output=True,
        text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    imported = result.stdout.strip().split(",")
    assert "core.views" in imported
    assert "core.plots" in imported
