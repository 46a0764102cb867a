"""python -m maxact.card: YAML front-matter fields and the Markdown block."""

import subprocess
import sys

import pytest
import yaml

from maxact import analysis as A
from maxact.card import build_card, front_matter, main, markdown, render
from maxact.results import load_result


def split_card(text):
    """(front-matter dict, markdown) of a rendered card."""
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_card_of_a_maxact_scan(fab_scan, capsys):
    assert main([str(fab_scan.path)]) == 0
    fields, body = split_card(capsys.readouterr().out)
    f = fields["activation_range"]
    ckpt = load_result(fab_scan.path)
    carrier = A.global_max(ckpt)
    assert f["max_abs_activation"] == carrier.M and f["max_abs_activation_site"] == carrier.site
    assert f["tokens"] == ckpt.metadata["corpus"]["num_tokens"]
    assert f["corpus"]["hash"] == "0123abcd" and f["protocol"]["dtype"] == "bfloat16"
    hist = ckpt.sites[carrier.site].abs_hist
    for fmt in ("int8", "fp8_e4m3"):
        for policy in A.DEFAULT_POLICIES:
            assert f["activation_scales"][fmt][policy] == pytest.approx(A.scale_for_policy(hist, policy, fmt))
    assert f["activation_sqnr_db"]["int8"]["max"] == pytest.approx(
        A.sqnr(hist, carrier.M / 127.0, "int8"), abs=1e-3)
    peaks = A.sample_peaks(ckpt)
    ci = A.bootstrap_ci(peaks)
    assert f["max_abs_activation_bootstrap_ci"] == {"level": 0.95, "lower": ci.lower, "upper": ci.upper}
    assert f["range_flags"]["fp8_e4m3_unscaled_overflow"] is True and f["range_flags"]["fp16_overflow"] is False
    assert "## Activation range" in body and carrier.site in body
    assert "bootstrap 95% interval" in body and "Range flags" in body
    assert "| int8 | mse |" in body


def test_card_of_a_paper_result_says_what_it_lacks(tmp_path):
    import os
    from pathlib import Path

    ref = Path(os.environ.get("MAXACT_REFERENCE_DIR", Path(__file__).resolve().parents[3] / "shared/reference/max_act_llm"))
    path = ref / "gemma-3-27b-it_activation_stats.json"
    if not path.exists():
        pytest.skip("paper reference results not found")
    card = build_card(load_result(path))
    f = front_matter(card)["activation_range"]
    assert f["max_abs_activation"] == 696320.0 and f["max_abs_activation_site"] == "layers.46.hidden"
    assert f["range_flags"]["fp16_overflow"] is True and f["range_flags"]["sites_over_fp16"] > 0
    assert f["activation_scales"]["int8"]["max"] == pytest.approx(696320.0 / 127.0)
    assert "percentile:99.9 (approximate)" in f["activation_scales"]["int8"]
    assert "activation_sqnr_db" not in f and "note" in f and "max_abs_activation_bootstrap_ci" not in f
    md = markdown(card)
    assert "no exact |x| histogram" in md and "float16 maximum" in md


def test_card_parts_and_module_entry_point(fab_scan):
    card = build_card(load_result(fab_scan.path), formats=("int4",), policies=("max",))
    only_yaml = render(card, "yaml")
    assert only_yaml.startswith("---\n") and "## Activation range" not in only_yaml
    assert yaml.safe_load(only_yaml.strip().strip("-"))["activation_range"]["activation_scales"]["int4"] == {
        "max": pytest.approx(3008.0 / 7.0)}
    assert not render(card, "markdown").startswith("---")
    proc = subprocess.run([sys.executable, "-m", "maxact.card", str(fab_scan.path), "--part", "markdown"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("## Activation range")
