"""Reading both layouts, M and its carrier, and the tokens and channels holding the peaks."""

import json

import numpy as np
import pytest

from fabricate import fabricate_scan
from maxact import analysis as A
from maxact.results import discover_results, load_result, paper_site_name


@pytest.mark.parametrize(
    "key,expected",
    [
        ("embedding_output", ("embedding", "embedding", None)),
        ("layer_3_hidden", ("layers.3.hidden", "hidden", 3)),
        ("layer_12_attn_output", ("layers.12.attn", "attn", 12)),
        ("layer_0_mlp_output", ("layers.0.mlp", "mlp", 0)),
        ("layer_7_mlp_gate", ("layers.7.gate", "gate", 7)),
        ("layer_2_router_logits", ("layers.2.router", "router", 2)),
        ("layer_2_moe_gate", ("layers.2.router", "router", 2)),
        ("final_layernorm", ("final_norm", "final_norm", None)),
        ("something_else", ("something_else", "module", None)),
    ],
)
def test_paper_site_names(key, expected):
    assert paper_site_name(key) == expected


def _paper_file(tmp_path, per_layer, name="toy-paper"):
    data = {"model_name": name, "model_type": "qwen3_moe", "num_hidden_layers": 2, "hidden_size": 8,
            "num_samples": 3, "max_seq_len": 16, "global_max_activation": -50.0,
            "global_max_location": "layer_1_hidden (min)", "per_layer_stats": per_layer}
    path = tmp_path / f"{name}_activation_stats.json"
    path.write_text(json.dumps(data))
    return path


def _entry(mx, mn, **extra):
    return {"mean": 0.0, "std": 1.0, "abs_mean": 0.5, "rms": 1.0, "max": mx, "min": mn, "count": 100.0, **extra}


def test_paper_layout_abs_max_ties_and_both_router_kinds(tmp_path):
    per_layer = {
        "embedding_output": _entry(1.0, -2.0),
        "layer_0_attn_output": _entry(3.0, -1.0),
        "layer_0_moe_gate": _entry(255.0, 0.0),
        "layer_0_router_logits": _entry(9.0, -500.0),
        "layer_0_mlp_output": _entry(10.0, -50.0),  # ties with the hidden state of layer 1: comes first
        "layer_0_hidden": _entry(20.0, -20.0),
        "layer_1_mlp_gate": _entry(900.0, -1.0),  # larger, but gates do not count
        "layer_1_hidden": _entry(40.0, -50.0),
        "final_layernorm": _entry(4.0, -4.0),
    }
    ckpt = load_result(_paper_file(tmp_path, per_layer))
    assert ckpt.layout == "paper"
    assert ckpt.sites["layers.0.router"].abs_max == 500.0  # router_logits keeps the name
    assert ckpt.sites["layers.0.moe_gate"].component == "router"
    assert ckpt.sites["embedding"].abs_max == 2.0  # max(|max|, |min|)
    carrier = A.global_max(ckpt)
    assert (carrier.M, carrier.site, carrier.signed_value) == (50.0, "layers.0.mlp", -50.0)
    assert list(ckpt.sites)[:2] == ["embedding", "layers.0.attn"]  # forward order
    assert list(ckpt.sites)[-1] == "final_norm"
    peaks = A.component_peaks(ckpt)
    assert peaks["gate"] == (900.0, "layers.1.gate") and peaks["router"][0] == 500.0


def test_unknown_file_is_refused(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(ValueError):
        load_result(bad)


def test_maxact_layout_round_trip(fab):
    ckpt = load_result(fab.path)
    assert ckpt.layout == "maxact" and ckpt.name == "tiny-fab"
    assert ckpt.has_histograms and ckpt.has_sample_peaks
    assert set(ckpt.sites) == set(fab.raw)
    for name, arrays in fab.raw.items():
        site = ckpt.sites[name]
        x = np.concatenate(arrays)
        assert site.abs_max == float(np.abs(x).max())
        assert int(site.abs_hist.sum()) == x.size
        np.testing.assert_array_equal(site.sample_abs_max, [np.abs(a).max() for a in arrays])
    assert ckpt.samples.category_names == list(fab.category_names)
    np.testing.assert_array_equal(ckpt.samples.corpus_index, fab.corpus_index)
    # loading the directory is the same
    assert set(load_result(fab.path.parent).sites) == set(ckpt.sites)


def test_m_excludes_gates_and_matches_a_direct_max(fab):
    ckpt = load_result(fab.path)
    direct = max(float(np.abs(np.concatenate(a)).max()) for n, a in fab.raw.items()
                 if fab.components[n][0] not in ("gate", "router"))
    gate = max(float(np.abs(np.concatenate(a)).max()) for n, a in fab.raw.items() if fab.components[n][0] == "gate")
    carrier = A.global_max(ckpt)
    assert carrier.M == direct < gate
    assert carrier.M == ckpt.stored_global_max and carrier.site == ckpt.stored_global_site
    # the spike is written by layer 1's MLP and carried by every later hidden state
    assert carrier.site == "layers.1.mlp"
    assert A.global_max(ckpt, exclude=("gate", "router", "mlp")).site == "layers.1.hidden"


def test_without_sidecar_statistics_still_load(tmp_path):
    f = fabricate_scan(tmp_path / "nosidecar", sidecar=False)
    ckpt = load_result(f.path)
    assert not ckpt.has_histograms and not ckpt.has_sample_peaks
    assert A.global_max(ckpt).M == 3008.0
    assert A.top_channels(ckpt) == []


def test_discover_results_expands_directories(tmp_path, fab):
    f2 = fabricate_scan(tmp_path / "runs" / "b", model_name="b")
    paper = _paper_file(tmp_path / "runs", {"layer_0_hidden": _entry(1.0, -1.0)})
    found = discover_results([tmp_path / "runs", fab.path])
    assert set(found) == {f2.path, paper, fab.path}
    with pytest.raises(FileNotFoundError):
        discover_results([tmp_path / "missing"])


def test_top_tokens_match_the_raw_values(fab):
    ckpt = load_result(fab.path)
    rows = A.top_entries(ckpt, k=5)
    # largest |x| over M sites, each from the site's own top-k: the spike token (3, 0), channel 5
    assert rows[0]["abs"] == A.global_max(ckpt).M
    assert (rows[0]["sample"], rows[0]["position"], rows[0]["channel"]) == (3, 0, 5)
    assert rows[0]["corpus_index"] == int(fab.corpus_index[3])
    assert rows[0]["token"] == "tok0" and "context" in rows[0]
    assert all(r["component"] not in ("gate", "router") for r in A.top_entries(ckpt, k=100))
    assert [r["abs"] for r in rows] == sorted((r["abs"] for r in rows), reverse=True)
    tokens = A.top_tokens(ckpt, k=3)
    keys = [(t["sample"], t["position"]) for t in tokens]
    assert keys[:2] == [(3, 0), (7, 1)] and len(set(keys)) == len(keys)
    assert tokens[0]["entries"] >= 4  # layers.1.mlp and the hidden states of layers 1..3


def test_top_channels_match_the_raw_values(fab):
    ckpt = load_result(fab.path)
    rows = A.top_channels(ckpt, k=3)
    hidden = [n for n, (c, _) in fab.components.items() if c == "hidden"]
    per_channel = np.max([np.abs(np.concatenate(fab.raw[n])).max(0) for n in hidden], axis=0)
    order = np.argsort(-per_channel, kind="stable")[:3]
    assert [r["channel"] for r in rows] == list(order)
    assert rows[0]["abs_max"] == pytest.approx(per_channel[order[0]])
    assert rows[0]["channel"] == 5 and rows[0]["top1_sites"] == 3  # hidden layers 1, 2, 3
