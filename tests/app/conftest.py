"""Fixtures for the dashboard tests: one published run shared by the session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from fixture_run import RUN_ID, build_fixture_workspace  # noqa: E402

from core.store import Workspace  # noqa: E402


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace whose latest run is the fixture run."""
    return build_fixture_workspace(tmp_path_factory.mktemp("workspace"))


@pytest.fixture(scope="session")
def run_id(workspace: Workspace) -> str:
    assert workspace.latest_run() == RUN_ID
    return RUN_ID
