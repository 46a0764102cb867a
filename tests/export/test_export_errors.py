"""Bad input: one-line messages on stderr and exit code 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from export_fakes import write_fake_scan

from maxact.export import ExportError, export
from maxact.export.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:    # argparse's own errors (an unknown --format)
        code = exc.code
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(code, err, *words):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def paper_only(tmp_path_factory):
    return write_fake_scan(tmp_path_factory.mktemp("paper") / "scan", linear=False)


@pytest.fixture(scope="module")
def no_channels(tmp_path_factory):
    return write_fake_scan(tmp_path_factory.mktemp("nochan") / "scan", channels=False)


@pytest.mark.parametrize("fmt", ["smoothquant", "input-scales", "json"])
def test_missing_result_dir(capsys, tmp_path, fmt):
    code, err = run_cli(capsys, tmp_path / "nope", "--format", fmt, "--out", tmp_path / "o")
    assert_one_line(code, err, "not found", "nope")
    assert not (tmp_path / "o").exists()


def test_dir_without_stats_json(capsys, tmp_path):
    code, err = run_cli(capsys, tmp_path, "--format", "smoothquant", "--out", tmp_path / "o")
    assert_one_line(code, err, "no stats.json")


@pytest.mark.parametrize("fmt", ["smoothquant", "input-scales"])
def test_no_linear_input_sites(capsys, tmp_path, paper_only, fmt):
    code, err = run_cli(capsys, paper_only.path, "--format", fmt, "--out", tmp_path / "o")
    assert_one_line(code, err, "no linear-input sites", "--sites linear-inputs")
    assert not (tmp_path / "o").exists()


def test_json_of_a_scan_without_linear_inputs_lists_its_other_sites(tmp_path, paper_only):
    export(paper_only.path, "json", tmp_path / "q.json")
    assert set(json.loads((tmp_path / "q.json").read_text())["sites"]) == {"layers.0.hidden", "layers.1.hidden"}


def test_smoothquant_without_channel_maxima(capsys, tmp_path, no_channels):
    code, err = run_cli(capsys, no_channels.path, "--format", "smoothquant", "--out", tmp_path / "o")
    assert_one_line(code, err, "--sites linear-inputs", "without --no-channels")
    # the other formats need only the histograms
    assert main([str(no_channels.path), "--format", "input-scales", "--out", str(tmp_path / "s"), "-q"]) == 0


@pytest.mark.parametrize("policy", ["foo", "percentile:101", "percentile:", "mse:3"])
def test_unknown_policy(capsys, tmp_path, no_channels, policy):
    code, err = run_cli(capsys, no_channels.path, "--format", "input-scales", "--out", tmp_path / "o",
                        "--policy", policy)
    assert_one_line(code, err, "--policy")
    assert not (tmp_path / "o").exists()


def test_unknown_dtype_and_format(capsys, tmp_path, no_channels):
    code, err = run_cli(capsys, no_channels.path, "--format", "input-scales", "--out", tmp_path / "o",
                        "--dtype", "int3")
    assert_one_line(code, err, "--dtype", "int3")
    code, err = run_cli(capsys, no_channels.path, "--format", "gptq", "--out", tmp_path / "o")
    assert_one_line(code, err, "gptq")
    with pytest.raises(ExportError, match="unknown 'gptq'"):
        export(no_channels.path, "gptq", tmp_path / "o")


def test_missing_sidecar(capsys, tmp_path):
    fake = write_fake_scan(tmp_path / "scan")
    (fake.path / "stats.safetensors").unlink()
    for fmt in ("input-scales", "json"):
        code, err = run_cli(capsys, fake.path, "--format", fmt, "--out", tmp_path / "o")
        assert_one_line(code, err, "stats.safetensors")
    code, err = run_cli(capsys, fake.path, "--format", "smoothquant", "--out", tmp_path / "o")
    assert_one_line(code, err, "--no-channels")


def test_module_entry_point(tmp_path):
    """``python -m maxact.export`` runs as a module and exits 2 with one line on bad input."""
    proc = subprocess.run([sys.executable, "-m", "maxact.export", str(tmp_path / "nope"), "--format", "json",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: result not found")
