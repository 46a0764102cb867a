"""End-to-end scans of tiny random models: every statistic in stats.json against an independent float64
computation on the same hooked tensors (captured by the test's own forward hooks during the scan)."""

from __future__ import annotations

import json
import os
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scan_capture import Capture
from safetensors.numpy import load_file
from scan_reference import site_stats

from maxact.scan import ScanConfig
from maxact.scan.runner import LoopProbes, scan

M_COMPONENTS = {"embedding", "hidden", "attn", "mlp", "final_norm"}
# The paper's published results live in the shared/ folder beside the checkout (MAXACT_REFERENCE_DIR overrides).
REFERENCE = Path(os.environ.get("MAXACT_REFERENCE_DIR",
                                Path(__file__).resolve().parents[3] / "shared/reference/max_act_llm"))
T_VAL, T_RATIO = 0.05, 4.0      # low thresholds so random tiny models have passing tokens


def run_scan(tmp_path, corpus, model, **kw):
    # The float64 reference below computes every token's median: the paper's semantics.
    kw.setdefault("token_median", "all")
    cap = Capture()
    cfg = ScanConfig(model=model, corpus=str(corpus), device="cpu", dtype="float32", backend="reference",
                     tokens_per_batch=30, out=str(tmp_path / "out"), topk=8, sun_t_val=T_VAL,
                     sun_t_ratio=T_RATIO, progress=False, **kw)
    result = scan(cfg, probes=LoopProbes(on_model=cap.on_model, before_forward=cap.before_forward))
    cap.remove()
    doc = json.loads((tmp_path / "out" / "stats.json").read_text())
    side = load_file(str(tmp_path / "out" / "stats.safetensors"))
    return result, doc, side, cap


def close(a, b, rtol=1e-5, atol=0.0):
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol) or (math.isnan(a) and math.isnan(b))


def check_site(name, entry, side, ref, num_channels):
    assert entry["count"] == ref["count"], name
    for k in ("nan_count", "posinf_count", "neginf_count"):
        assert entry[k] == ref[k], (name, k)
    for k in ("min", "max", "abs_max"):
        assert entry[k] == ref[k], (name, k, entry[k], ref[k])
    scale = ref["abs_sum"] + 1e-30
    for k in ("sum", "abs_sum"):
        assert close(entry[k], ref[k], atol=1e-6 * scale), (name, k, entry[k], ref[k])
    for k in ("sum_sq", "mean", "std", "rms", "abs_mean"):
        assert close(entry[k], ref[k], atol=1e-6 * abs(ref["rms"])), (name, k, entry[k], ref[k])
    assert entry["quantiles"] == {repr(q): v for q, v in ref["quantiles"].items()}, name
    # the measured fields; each entry's provenance (token, context) is checked in test_scan_issue8_provenance
    measured = ("abs", "value", "sample", "position", "channel")
    assert [{k: e[k] for k in measured} for e in entry["topk"]] == ref["topk"], name
    np.testing.assert_array_equal(side[f"{name}/abs_hist"], ref["abs_hist"], err_msg=name)
    np.testing.assert_array_equal(side[f"{name}/channel_abs_max"], ref["channel_abs_max"], err_msg=name)
    np.testing.assert_array_equal(side[f"{name}/sample_abs_max"], ref["sample_abs_max"], err_msg=name)
    assert side[f"{name}/channel_abs_max"].shape == (num_channels,)
    if ref["sun"] is None:
        assert entry["sun"] is None, name
        return
    sun, rs = entry["sun"], ref["sun"]
    for k in ("n_tokens", "n_pass", "max_ratio_sample", "max_ratio_position", "max_ratio_channel",
              "peak_sample", "peak_position", "peak_channel", "peak_abs", "peak_median",
              "max_ratio_abs", "max_ratio_median", "t_val", "t_ratio"):
        assert sun[k] == rs[k], (name, k, sun[k], rs[k])
    for k in ("max_ratio", "peak_ratio", "mean_ratio", "std_ratio"):
        assert close(sun[k], rs[k], rtol=1e-9), (name, k, sun[k], rs[k])


@pytest.mark.parametrize("model", ["random:tiny-qwen3", "random:tiny-gemma3", "random:tiny-qwen3-moe"])
def test_every_statistic_matches_float64_reference(tmp_path, corpus_file, model):
    result, doc, side, cap = run_scan(tmp_path, corpus_file, model)
    n = doc["samples"]["count"]
    assert n == 9 and doc["metadata"]["corpus"]["num_tokens"] == 83
    assert doc["metadata"]["num_tokens_scanned"] == 83 and doc["metadata"]["num_batches"] > 2
    assert doc["metadata"]["padding_fraction"] > 0        # padding rows are masked out below
    checked = 0
    for name, entry in doc["sites"].items():
        if name not in cap.specs:
            continue
        spec = cap.specs[name]
        x, s, p = cap.site(name)
        ref = site_stats(x, s, p, topk=8, num_samples=n, track_tokens=spec.track_tokens, t_val=T_VAL,
                         t_ratio=T_RATIO)
        check_site(name, entry, side, ref, spec.num_channels)
        assert entry["component"] == spec.component and entry["layer"] == spec.layer
        assert entry["calls"] > 0
        if spec.component in M_COMPONENTS:   # position 0 split, exact
            ft = entry["first_token"]
            assert ft["abs_max_pos0"] == float(np.abs(x[p == 0]).max())
            assert ft["abs_max_without_pos0"] == float(np.abs(x[p > 0]).max())
            assert ft["abs_max_with_pos0"] == entry["abs_max"]
        checked += 1
    assert checked == len(doc["sites"]) >= 10
    if "moe" in model:   # router sites also carry the tokens routed to each expert (top-2 of 4)
        routers = [e for e in doc["sites"].values() if e["component"] == "router"]
        assert routers and all(len(e["expert_tokens"]) == 4 and sum(e["expert_tokens"]) == 2 * 83
                               for e in routers)
    # M and its carrier over the M-eligible sites only
    m_sites = {k: v for k, v in doc["sites"].items() if v["component"] in M_COMPONENTS}
    carrier = max(m_sites, key=lambda k: m_sites[k]["abs_max"])
    assert doc["global_max_abs"] == m_sites[carrier]["abs_max"] and doc["global_max_site"] == carrier
    assert abs(doc["global_max_value"]) == doc["global_max_abs"]
    ft = doc["first_token"]
    assert ft["global_max_abs_without_pos0"] == max(v["first_token"]["abs_max_without_pos0"] for v in m_sites.values())
    assert ft["global_max_abs_with_pos0"] == doc["global_max_abs"]
    # per-sample tables
    assert side["samples/num_tokens"].tolist() == [9, 14, 5, 14, 7, 3, 11, 14, 6]
    assert side["samples/corpus_index"].tolist() == list(range(9))
    assert [doc["samples"]["category_names"][c] for c in side["samples/category"]] == \
        ["math", "code", "web"] * 3
    assert doc["coverage"]["never_fired"] == [] and doc["nonfinite"] == []
    assert result.global_max_abs == doc["global_max_abs"]
    assert not (tmp_path / "out" / "checkpoint").exists()


def test_skip_first_tokens_equals_masking_those_positions(tmp_path, corpus_file):
    result, doc, side, cap = run_scan(tmp_path, corpus_file, "random:tiny-qwen3", skip_first_tokens=2)
    n = doc["samples"]["count"]
    for name, entry in doc["sites"].items():
        spec = cap.specs[name]
        x, s, p = cap.site(name, min_position=2)
        ref = site_stats(x, s, p, topk=8, num_samples=n, track_tokens=spec.track_tokens, t_val=T_VAL,
                         t_ratio=T_RATIO)
        check_site(name, entry, side, ref, spec.num_channels)
        if spec.component in M_COMPONENTS:
            x0, _, p0 = cap.site(name)
            ft = entry["first_token"]
            assert ft["abs_max_pos0"] == float(np.abs(x0[p0 == 0]).max())
            assert ft["abs_max_without_pos0"] == entry["abs_max"]
            assert ft["abs_max_with_pos0"] == max(entry["abs_max"], ft["abs_max_pos0"])
    assert doc["first_token"]["skip_first_tokens"] == 2
    assert doc["metadata"]["config"]["skip_first_tokens"] == 2


def test_paper_export_keys_match_reference_layout(tmp_path, corpus_file):
    ref_path = REFERENCE / "Qwen3-8B_activation_stats.json"
    if not ref_path.exists():
        pytest.skip(f"reference file {ref_path} not present on this machine")
    run_scan(tmp_path, corpus_file, "random:tiny-qwen3", export=("max-act-llm",))
    ours = json.loads((tmp_path / "out" / "random-tiny-qwen3_activation_stats.json").read_text())
    ref = json.loads(ref_path.read_text())
    assert list(ours) == list(ref)
    expected = [k for k in ref["per_layer_stats"] if not re.match(r"layer_(\d+)_", k)
                or int(re.match(r"layer_(\d+)_", k).group(1)) < 2]
    assert list(ours["per_layer_stats"]) == expected
    for key in expected:
        assert list(ours["per_layer_stats"][key]) == list(ref["per_layer_stats"][key]), key
    assert ours["num_hidden_layers"] == 2 and ours["num_samples"] == 9
