"""Fixtures for the dashboard tests: a handmade run and a real pipeline run.

The handmade run (`workspace`) has hostile device names and exactly known incidents.
The real run (`pipeline_workspace`) comes from the pipeline on a small sample plant,
so the pages are also checked against what the engine actually writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from fixture_run import RUN_ID, build_fixture_workspace  # noqa: E402

from core import ingest, synth  # noqa: E402
from core.config import ModelConfig, RunConfig  # noqa: E402
from core.pipeline import run_pipeline  # noqa: E402
from core.store import Workspace  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

# Measured at about 30 s on two shared CPU cores: 35 devices, 600 one-minute bins,
# 15 epochs at most.
PIPELINE_PLANT = synth.PlantConfig(seed=3, field_devices=24, hours=10)
PIPELINE_EPOCHS = 15


def incident_page(workspace: Workspace, run_id: str, incident_id: str, monkeypatch,
                  timeout: int = 60) -> AppTest:
    """Run the Incident page on `workspace` as its URL opens one incident."""
    monkeypatch.setenv("TGLOC_WORKSPACE", str(workspace.root))
    monkeypatch.chdir(REPOSITORY)
    app = AppTest.from_file(str(REPOSITORY / "pages" / "2_Incident.py"),
                            default_timeout=timeout)
    app.query_params["run"] = run_id
    app.query_params["incident"] = incident_id
    app.run()
    return app


def ingest_sample_plant(path: Path, plant_config: synth.PlantConfig) -> Workspace:
    """Create a workspace at `path` whose store contains a generated sample plant."""
    workspace = Workspace.create(path)
    plant = synth.generate_plant(plant_config)
    files = synth.write_plant(plant, workspace.root / "input")
    for target in ("events", "measurements"):
        ingest.ingest_file(workspace, files[target], ingest.IngestOptions(target=target))
    synth.store_plant(workspace, plant)
    return workspace


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace whose latest run is the fixture run."""
    return build_fixture_workspace(tmp_path_factory.mktemp("workspace"))


@pytest.fixture(scope="session")
def run_id(workspace: Workspace) -> str:
    assert workspace.latest_run() == RUN_ID
    return RUN_ID


@pytest.fixture(scope="session")
def pipeline_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace with one run published by the real pipeline on a sample plant."""
    workspace = ingest_sample_plant(
        tmp_path_factory.mktemp("pipeline") / "workspace", PIPELINE_PLANT
    )
    config = RunConfig(model=ModelConfig(epochs=PIPELINE_EPOCHS))
    run_pipeline(workspace, config)
    assert workspace.latest_run() is not None
    return workspace
