"""The whole test session's settings: the registry files the engines it runs read.

Engines that tests start (in process or as `dossier run` children) read their settings from the
environment, so the extra registry files (contract 1.1) are set there once, before any test:
the agencies of the contract's examples that tests/fixtures/events.py uses, and the simulated
province's TEST-ONLY public keys (dossier/tools/simulation_registry.yaml), so that the main
job's signed inputs are checked. A session started with DOSSIER_REGISTRY_FILES set keeps its own.
"""

from __future__ import annotations

import os

import pytest

from dossier.tools.simulation import SIMULATION_REGISTRY
from tests.fixtures.events import REGISTRY_FILE


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("DOSSIER_REGISTRY_FILES", f"{REGISTRY_FILE}:{SIMULATION_REGISTRY}")
