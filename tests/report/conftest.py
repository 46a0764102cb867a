"""Fixtures of the report and card tests: a built report over a few paper results and a fabricated scan."""

import os
import sys
from pathlib import Path

import pytest

# The fabricated-scan builder lives with the analysis tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analysis"))

from fabricate import fabricate_scan  # noqa: E402

REFERENCE_DIR = Path(
    os.environ.get("MAXACT_REFERENCE_DIR", Path(__file__).resolve().parents[3] / "shared/reference/max_act_llm")
)
# A few paper results covering the interesting cases: an MoE/dense pair, an MLP carrier, a final-norm
# carrier, a Sun failure, fp16 overflow.
REFERENCE_SUBSET = ("Qwen3-30B-A3B", "Qwen3-32B", "gpt-oss-20b", "Qwen3.5-0.8B", "gemma-3-4b-it")


@pytest.fixture(scope="session")
def fab_scan(tmp_path_factory):
    return fabricate_scan(tmp_path_factory.mktemp("scan") / "tiny-fab")


@pytest.fixture(scope="session")
def reference_files():
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"paper reference results not found at {REFERENCE_DIR} (set MAXACT_REFERENCE_DIR)")
    return [REFERENCE_DIR / f"{n}_activation_stats.json" for n in REFERENCE_SUBSET]


@pytest.fixture(scope="session")
def built_report(tmp_path_factory, fab_scan, reference_files):
    """(out_dir, summary) of a report over the reference subset plus the fabricated scan."""
    from maxact.report import build_report

    out = tmp_path_factory.mktemp("report")
    summary = build_report([*reference_files, fab_scan.path.parent], out)
    return out, summary
