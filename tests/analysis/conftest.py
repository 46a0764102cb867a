"""Fixtures of the analysis tests: the paper's published results and a fabricated maxact scan."""

import os
from pathlib import Path

import pytest

from fabricate import fabricate_scan

# The published per-checkpoint statistics (27 files); the shared folder sits beside the repository.
REFERENCE_DIR = Path(
    os.environ.get("MAXACT_REFERENCE_DIR", Path(__file__).resolve().parents[3] / "shared/reference/max_act_llm")
)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"paper reference results not found at {REFERENCE_DIR} (set MAXACT_REFERENCE_DIR)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def reference_checkpoints(reference_dir):
    from maxact.results import discover_results, load_result

    return {c.name: c for c in (load_result(p) for p in discover_results([reference_dir]))}


@pytest.fixture(scope="session")
def fab(tmp_path_factory):
    """A fabricated maxact scan with sidecar, and its raw activations."""
    return fabricate_scan(tmp_path_factory.mktemp("fab") / "tiny-fab")
