"""Hook coverage (a site that never fires is listed and warned about), the pre-flight plan, and scans
with statistics switched off or other site modes."""

from __future__ import annotations

import json
import logging

import pytest
from torch import nn

from maxact.scan import ScanConfig, pipeline
from maxact.scan.runner import scan
from maxact.scan.table import render
from maxact.sites import SiteSpec


def cfg(tmp_path, corpus, **kw):
    base = dict(model="random:tiny-qwen3", corpus=str(corpus), device="cpu", dtype="float32",
                backend="reference", tokens_per_batch=30, out=str(tmp_path / "out"), progress=False)
    base.update(kw)
    return ScanConfig(**base)


def test_site_that_never_fires_is_reported(tmp_path, corpus_file, monkeypatch, caplog):
    real_load, real_sites = pipeline.load_model, pipeline.discover_sites

    def load_with_ghost(config, device):
        model = real_load(config, device)
        model.model.ghost = nn.Linear(64, 64)     # registered, but the forward never calls it
        return model

    def sites_with_ghost(model, config):
        ghost = SiteSpec(name="ghost.output", component="module", layer=None, module_name="ghost",
                         capture="output", part=None, track_tokens=False, num_channels=64)
        return real_sites(model, config) + [ghost]

    monkeypatch.setattr(pipeline, "load_model", load_with_ghost)
    monkeypatch.setattr(pipeline, "discover_sites", sites_with_ghost)
    with caplog.at_level(logging.WARNING):
        result = scan(cfg(tmp_path, corpus_file))
    doc = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert doc["coverage"]["never_fired"] == ["ghost.output"]
    assert doc["coverage"]["requested"] == len(doc["sites"])
    assert doc["sites"]["ghost.output"]["calls"] == 0 and doc["sites"]["ghost.output"]["count"] == 0
    assert any("never received a tensor" in r.message and "ghost.output" in r.message for r in caplog.records)
    assert "hooks that never fired: ghost.output" in render(result)


def test_preflight_plan_is_logged_before_the_first_batch(tmp_path, corpus_file, caplog):
    with caplog.at_level(logging.INFO, logger="maxact.scan"):
        scan(cfg(tmp_path, corpus_file))
    plan = [r.message for r in caplog.records if r.message.startswith("plan:")]
    assert plan and "9 samples, 83 tokens" in plan[0] and "longest sample 14 tokens" in plan[0]
    assert "batches" in plan[0] and "padding" in plan[0]


def test_statistics_switched_off(tmp_path, corpus_file):
    scan(cfg(tmp_path, corpus_file, track_channels=False, track_tokens=False, topk=0))
    doc = json.loads((tmp_path / "out" / "stats.json").read_text())
    from safetensors.numpy import load_file

    side = load_file(str(tmp_path / "out" / "stats.safetensors"))
    for name, site in doc["sites"].items():
        assert site["sun"] is None and site["topk"] == []
        assert f"{name}/channel_abs_max" not in side and f"{name}/abs_hist" in side


def test_candidate_medians_keep_n_pass_and_export(tmp_path, corpus_file):
    scan(cfg(tmp_path, corpus_file, sun_t_val=0.05, sun_t_ratio=4.0, out=str(tmp_path / "all")))
    scan(cfg(tmp_path, corpus_file, sun_t_val=0.05, sun_t_ratio=4.0, token_median="candidates",
             export=("max-act-llm",), out=str(tmp_path / "cand")))
    a = json.loads((tmp_path / "all" / "stats.json").read_text())["sites"]
    b = json.loads((tmp_path / "cand" / "stats.json").read_text())["sites"]
    for name in a:
        if a[name]["sun"] is not None:
            for k in ("n_tokens", "n_pass", "peak_abs", "peak_sample", "peak_position", "peak_channel"):
                assert a[name]["sun"][k] == b[name]["sun"][k], (name, k)
    assert (tmp_path / "cand" / "random-tiny-qwen3_activation_stats.json").exists()


@pytest.mark.parametrize("sites, component", [("linear-inputs", "linear_input"), (r"layers\.0\.mlp\..*", "module")])
def test_other_site_modes(tmp_path, corpus_file, sites, component):
    result = scan(cfg(tmp_path, corpus_file, sites=sites))
    doc = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert doc["sites"] and all(s["component"] == component for s in doc["sites"].values())
    assert doc["global_max_site"] is None           # M is over residual-type sites only
    assert "max |a| over all sites" in render(result)
