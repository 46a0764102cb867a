"""stats.json / sidecar layout, the reader round trip, the paper export's keys, the end table."""

from __future__ import annotations

import json
import os
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scan_fake_results import fake_result
from safetensors.numpy import load_file

from maxact.scan.paper_export import export_paper
from maxact.scan.table import render
from maxact.scan.writer import SCHEMA, write_results

# The paper's published results live in the shared/ folder beside the checkout (MAXACT_REFERENCE_DIR overrides).
REFERENCE = Path(os.environ.get("MAXACT_REFERENCE_DIR",
                                Path(__file__).resolve().parents[3] / "shared/reference/max_act_llm"))


def test_stats_json_layout_and_values(tmp_path):
    res = fake_result()
    jpath, spath = write_results(res, tmp_path)
    doc = json.loads(jpath.read_text())
    assert doc["schema"] == SCHEMA == "maxact.stats/1"
    assert doc["global_max_abs"] == 3000.0 and doc["global_max_value"] == -3000.0
    assert doc["global_max_site"] == "layers.1.hidden"
    site = doc["sites"]["layers.1.hidden"]
    for key in ("component", "layer", "module", "num_channels", "count", "mean", "std", "rms", "abs_mean",
                "min", "max", "abs_max", "nan_count", "posinf_count", "neginf_count", "quantiles", "sun",
                "topk"):
        assert key in site
    assert list(site["quantiles"]) == ["0.25", "0.5", "0.75", "0.9", "0.99", "0.999", "0.9999"]
    assert site["topk"][0] == {"abs": 3000.0, "value": -3000.0, "sample": 0, "position": 0, "channel": 3}
    assert doc["sites"]["layers.0.gate"]["sun"] is None
    assert doc["first_token"]["global_max_abs_pos0"] == 3000.0
    assert doc["first_token"]["global_max_abs_without_pos0"] < 3000.0
    side = load_file(str(spath))
    assert side["layers.1.hidden/abs_hist"].dtype == np.int64 and side["layers.1.hidden/abs_hist"].shape == (32768,)
    assert side["layers.1.hidden/channel_abs_max"][3] == 3000.0
    assert side["layers.1.hidden/sample_abs_max"][0] == 3000.0
    assert side["samples/category"].dtype == np.int32 and side["samples/corpus_index"].dtype == np.int64
    assert int(side["layers.1.hidden/abs_hist"].sum()) == site["count"]


def test_global_max_excludes_gate_and_router(tmp_path):
    res = fake_result(moe=True)
    gate = res.sites["layers.0.gate"]
    gate.summary["max"] = gate.summary["abs_max"] = 1e9
    doc = json.loads(write_results(res, tmp_path)[0].read_text())
    assert doc["global_max_abs"] == 3000.0
    assert doc["component_max_abs"]["gate"]["abs_max"] == 1e9


def test_reader_round_trip(tmp_path):
    from maxact.results import load_result

    res = fake_result()
    write_results(res, tmp_path)
    back = load_result(tmp_path)
    assert back.layout == "maxact" and back.stored_global_max == 3000.0
    assert set(back.sites) == set(res.sites)
    assert back.sites["layers.1.hidden"].abs_hist is not None


def _pattern(key: str) -> str:
    return re.sub(r"\d+", "N", key)


@pytest.mark.parametrize("model_type, ref_file, moe", [
    ("qwen2", "Qwen2.5-1.5B_activation_stats.json", False),
    ("qwen3_moe", "Qwen3-30B-A3B_activation_stats.json", True),
])
def test_paper_export_keys_match_reference(tmp_path, model_type, ref_file, moe):
    ref_path = REFERENCE / ref_file
    if not ref_path.exists():
        pytest.skip(f"reference file {ref_path} not present on this machine")
    ref = json.loads(ref_path.read_text())
    res = fake_result(model_type=model_type, moe=moe)
    if moe:   # the reference MoE model has routers in every layer and no dense gate
        res.sites.pop("layers.0.gate")
    ours = json.loads(export_paper(res, tmp_path).read_text())
    assert list(ours) == list(ref)
    ref_fields = {_pattern(k): list(v) for k, v in ref["per_layer_stats"].items()}
    our_fields = {_pattern(k): list(v) for k, v in ours["per_layer_stats"].items()}
    for pattern, fields in our_fields.items():
        assert pattern in ref_fields, pattern
        assert fields == ref_fields[pattern], pattern
    assert {p for p in ref_fields if "router" not in p} <= set(our_fields) | {"layer_N_mlp_gate"}
    assert ours["global_max_location"] == "layer_1_hidden (min)"
    assert ours["global_max_activation"] == -3000.0
    assert ours["per_layer_stats"]["layer_1_hidden"]["sun_peak_abs"] == 3000.0


def test_end_table_mentions_m_carrier_components_and_float16():
    res = fake_result(big=70000.0)
    text = render(res)
    assert "M = 70000 at layers.1.hidden (value -70000; sample 0, position 0, channel 3)" in text
    assert "float16" in text and "bfloat16" in text
    for comp in ("embedding", "attn", "gate", "mlp", "hidden", "final_norm"):
        assert re.search(rf"^{comp}\s", text, re.M), comp
    assert "NaN/inf: none" in text


def test_nonfinite_sites_are_reported(tmp_path):
    res = fake_result()
    s = res.sites["layers.0.mlp"].summary
    s["nan_count"], s["posinf_count"] = 5, 1
    s["topk"]["abs"][0] = math.inf
    doc = json.loads(write_results(res, tmp_path)[0].read_text())
    assert doc["nonfinite"][0]["site"] == "layers.0.mlp" and doc["nonfinite"][0]["nan_count"] == 5
    assert len(doc["nonfinite"][0]["inf_locations"]) == 1
    assert "layers.0.mlp: nan 5, +inf 1" in render(res)
