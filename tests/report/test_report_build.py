"""python -m maxact.report: the files it writes and what summary.json holds."""

import json
import re

import numpy as np
import pytest

from maxact import analysis as A
from maxact.report.__main__ import main as report_main
from maxact.results import load_result

CORE_FIGURES = ("m_per_checkpoint", "depth_heatmap", "trajectories", "sun_scatter")


def test_summary_has_checkpoints_and_pairs(built_report, fab_scan):
    out, summary = built_report
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    ck = on_disk["checkpoints"]
    assert set(ck) == {"Qwen3-30B-A3B", "Qwen3-32B", "gpt-oss-20b", "Qwen3.5-0.8B", "gemma-3-4b-it", "tiny-fab"}
    for name, rec in ck.items():
        assert {"M", "carrier_site", "carrier_component", "sun_pass"} <= set(rec)
    assert ck["gpt-oss-20b"]["carrier_component"] == "mlp"
    assert ck["Qwen3.5-0.8B"]["carrier_site"] == "final_norm" and ck["Qwen3.5-0.8B"]["sun_pass"] is False
    assert ck["gemma-3-4b-it"]["range_flags"]["fp16_overflow"] is True
    fab = ck["tiny-fab"]
    assert fab["M"] == A.global_max(load_result(fab_scan.path)).M
    # default pairs: only those with both checkpoints present
    pairs = on_disk["pairs"]
    assert [(p["a"], p["b"]) for p in pairs] == [("Qwen3-30B-A3B", "Qwen3-32B")]
    assert round(pairs[0]["ratio"], 1) == 23.4
    assert on_disk["carrier_counts"] == {"mlp": 2, "hidden": 3, "final_norm": 1}


def test_histogram_results_get_quantization_stability_and_tokens(built_report, fab_scan):
    _, summary = built_report
    fab = summary["checkpoints"]["tiny-fab"]
    carrier = fab["quantization"]["carrier"]
    assert {(r["format"], r["policy"]) for r in carrier} == {
        (f, p) for f in A.DEFAULT_FORMATS for p in A.DEFAULT_POLICIES}
    site = load_result(fab_scan.path).sites[fab["carrier_site"]]
    for r in carrier:
        assert r["sqnr_db"] == pytest.approx(A.sqnr(site.abs_hist, r["scale"], r["format"]))
    assert len(fab["quantization"]["sites"]) == len(fab_scan.raw)
    assert [s["size"] for s in fab["stability"]] == list(A.default_sizes(20))
    assert fab["bootstrap_ci"]["upper"] == fab["M"]
    assert fab["top_tokens"][0]["sample"] == 3 and fab["top_channels"][0]["channel"] == 5
    paper = summary["checkpoints"]["Qwen3-32B"]
    assert "quantization" not in paper and "stability" not in paper and paper["has_histograms"] is False


def test_figures_written_as_png_and_svg(built_report):
    out, summary = built_report
    figs = summary["figures"]
    assert set(CORE_FIGURES) <= set(figs)
    assert {"pair_ratios", "sqnr_by_policy", "stability"} <= set(figs)
    for stem, files in figs.items():
        assert sorted(files) == [f"{stem}.png", f"{stem}.svg"]
        png = (out / f"{stem}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        assert (out / f"{stem}.svg").read_text()[:200].lstrip().startswith("<?xml")


def test_report_html_is_self_contained(built_report):
    out, summary = built_report
    page = (out / "report.html").read_text()
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=", page)
    # outside plotly's own bundle (the first script), no URL at all
    start = page.index("<script>")
    rest = page[:start] + page[page.index("</script>", start):]
    assert not re.search(r"https?://", rest)
    for stem in summary["figures"]:
        assert f'data-figure="{stem}"' in page
    assert "tiny-fab" in page and "Qwen3-30B-A3B" in page


def test_cli_with_pairs_file_and_directory(tmp_path, fab_scan, reference_files, capsys):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"a": "Qwen3-30B-A3B", "b": "tiny-fab", "label": "fab vs moe"},
                                 {"a": "nope", "b": "tiny-fab", "label": "missing"}]))
    out = tmp_path / "out"
    assert report_main([str(reference_files[0]), str(fab_scan.path.parent), "--out", str(out),
                        "--pairs", str(pairs), "--sun-ratio", "500", "--formats", "int8",
                        "--policies", "max,mse"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    got = {p["label"]: p["ratio"] for p in summary["pairs"]}
    assert got["fab vs moe"] == pytest.approx(3008.0 / 1512.0) and got["missing"] is None
    assert summary["sun_thresholds"]["t_ratio"] == 500.0
    rows = summary["checkpoints"]["tiny-fab"]["quantization"]["carrier"]
    assert {(r["format"], r["policy"]) for r in rows} == {("int8", "max"), ("int8", "mse")}
    assert "report.html" in capsys.readouterr().out


def test_duplicate_names_are_kept_apart(tmp_path, fab_scan):
    from fabricate import fabricate_scan

    other = fabricate_scan(tmp_path / "again", seed=3)
    from maxact.report import build_report

    summary = build_report([fab_scan.path, other.path], tmp_path / "out")
    assert set(summary["checkpoints"]) == {"tiny-fab", "tiny-fab (2)"}
    assert np.isfinite(summary["checkpoints"]["tiny-fab (2)"]["M"])


def test_silent_site_and_inf_values(tmp_path):
    """A site that never fired (NaN statistics, no arrays) and an inf activation do not break anything."""
    from fabricate import fabricate_scan
    from safetensors.numpy import load_file, save_file

    from maxact.card import build_card, render
    from maxact.report import build_report

    f = fabricate_scan(tmp_path / "odd")
    doc = json.loads(f.path.read_text())
    nan = float("nan")
    doc["sites"]["layers.9.attn"] = {"component": "attn", "layer": 9, "module": "m", "num_channels": 16, "calls": 0,
                                     "count": 0, "mean": nan, "std": nan, "rms": nan, "abs_mean": nan, "min": nan,
                                     "max": nan, "abs_max": nan, "quantiles": {}, "sun": None, "topk": []}
    site = doc["sites"]["layers.2.attn"]
    site.update(max=float("inf"), abs_max=float("inf"), posinf_count=1)
    f.path.write_text(json.dumps(doc))  # Python's json writes NaN / Infinity, as the scanner does
    side = f.path.with_name("stats.safetensors")
    tensors = load_file(str(side))
    tensors["layers.2.attn/abs_hist"][0x7F80] += 1
    save_file(tensors, str(side))

    ckpt = load_result(f.path)
    carrier = A.global_max(ckpt)
    assert carrier.M == float("inf") and carrier.site == "layers.2.attn"
    summary = build_report([f.path], tmp_path / "out")
    rec = summary["checkpoints"]["tiny-fab"]
    assert rec["M"] == "inf"
    json.loads((tmp_path / "out" / "summary.json").read_text())  # strict JSON
    quant = {r["format"] + r["policy"]: r for r in rec["quantization"]["sites"]["layers.2.attn"]}
    assert quant["int8max"]["clip"] == "inf"
    assert np.isfinite(quant["int8mse"]["sqnr_db"])  # the MSE clip ignores the inf bin
    assert "## Activation range" in render(build_card(ckpt))
