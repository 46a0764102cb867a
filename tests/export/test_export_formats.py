"""Each export format on a fake scan written by the scanner's writer, against a direct computation on
the same raw activations (tests/export/export_reference.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from export_fakes import write_fake_scan
from safetensors import safe_open
from safetensors.numpy import load_file

import export_reference as ref
from maxact.export import export
from maxact.export.__main__ import main

POLICIES = ("max", "percentile:99.9", "percentile:99.99", "mse")
DTYPES = ("int8", "int4", "fp8_e4m3", "fp8_e5m2")


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_scan(tmp_path_factory.mktemp("fake") / "scan")


def ref_clip(x, policy, dtype):
    if policy == "max":
        return ref.exact_max(x)
    if policy.startswith("percentile:"):
        return ref.nearest_rank(x, float(policy.split(":")[1]))
    return None   # mse: checked by its error, not by its value (ties)


def check_row(row, x, policy, dtype, where):
    """clip, float32 scale, SQNR and saturated share of one exported (policy, dtype) entry."""
    clip = ref_clip(x, policy, dtype)
    if clip is None:
        best = ref.best_mse_error(x, dtype)
        assert ref.mse_error(x, row["clip"], dtype) <= best * (1 + 1e-9), where
        clip = row["clip"]
    assert row["clip"] == clip, (where, row["clip"], clip)
    assert row["scale"] == ref.f32_scale(clip, dtype), where
    assert math.isclose(row["sqnr_db"], ref.sqnr_db(x, row["scale"], dtype), rel_tol=1e-9), where
    assert row["saturated_fraction"] == ref.saturated(x, clip), where


def test_smoothquant_is_the_channel_max_of_every_fired_linear_input(fake, tmp_path):
    out = tmp_path / "act_scales.pt"
    assert main([str(fake.path), "--format", "smoothquant", "--out", str(out)]) == 0
    scales = torch.load(out, weights_only=True)
    fired = {s: m for s, m in fake.modules.items() if s not in fake.never_fired}
    assert set(scales) == set(fired.values())
    for site, module in fired.items():
        got = scales[module]
        assert got.dtype == torch.float32 and got.shape == (fake.raw[site].shape[1],)
        np.testing.assert_array_equal(got.numpy(), ref.channel_max(fake.raw[site]), err_msg=module)


def test_module_prefix_names_the_checkpoint_modules(fake, tmp_path):
    export(fake.path / "stats.json", "smoothquant", tmp_path / "a.pt", module_prefix="model.")
    keys = set(torch.load(tmp_path / "a.pt", weights_only=True))
    assert keys == {"model." + m for s, m in fake.modules.items() if s not in fake.never_fired}


@pytest.mark.parametrize("policy, dtype", [("max", "int8"), ("percentile:99.99", "int8"),
                                           ("percentile:99.9", "fp8-e4m3"), ("mse", "int8"), ("mse", "fp8-e4m3")])
def test_input_scales_match_direct_computation(fake, tmp_path, policy, dtype):
    out = tmp_path / "scales.safetensors"
    assert main([str(fake.path), "--format", "input-scales", "--out", str(out), "--policy", policy,
                 "--dtype", dtype, "-q"]) == 0
    tensors = load_file(str(out))
    fmt = dtype.replace("-", "_")
    fired = {s: m for s, m in fake.modules.items() if s not in fake.never_fired}
    assert set(tensors) == {m + ".input_scale" for m in fired.values()}
    doc = json.loads((tmp_path / "scales.safetensors.json").read_text())
    assert (doc["policy"], doc["dtype"], doc["qmax"]) == (policy, fmt, ref.QMAX[fmt])
    assert set(doc["modules"]) == set(fired.values())
    assert doc["skipped"] == {fake.modules[s]: "the hook never received a token" for s in fake.never_fired}
    for site, module in fired.items():
        t = tensors[module + ".input_scale"]
        assert t.dtype == np.float32 and t.shape == ()
        row = doc["modules"][module]
        assert row["scale"] == float(t), module
        assert row["site"] == site and row["fused_expert"] == (site in fake.fused)
        check_row(row, fake.raw[site], policy, fmt, module)
    with safe_open(str(out), "np") as fh:
        assert fh.metadata()["policy"] == policy and fh.metadata()["dtype"] == fmt


def test_max_policy_never_saturates_float32_activations(fake, tmp_path):
    """The histogram truncates float32 values; the max clip is the exact max, so nothing saturates."""
    export(fake.path, "input-scales", tmp_path / "s.safetensors")
    row = json.loads((tmp_path / "s.safetensors.json").read_text())["modules"]["layers.0.mlp.up_proj"]
    x = fake.raw["layers.0.mlp.up_proj.input"]
    assert row["clip"] == ref.exact_max(x) > ref.truncated_abs(x).max()
    assert row["saturated_fraction"] == 0.0
    assert float(np.float32(row["scale"])) * 127 >= np.abs(x).max() * (1 - 2 ** -23)


def test_json_has_every_site_every_policy_and_format(fake, tmp_path):
    out = tmp_path / "quant.json"
    assert main([str(fake.path), "--format", "json", "--out", str(out)]) == 0
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text     # strict JSON for any tool
    doc = json.loads(text)
    assert set(doc["sites"]) == set(fake.raw) and doc["policies"] == list(POLICIES)
    for site, x in fake.raw.items():
        entry = doc["sites"][site]
        assert set(entry["quant"]) == set(DTYPES)
        if site in fake.never_fired:
            assert entry["count"] == 0 and entry["amax"] is None
            assert all(r["scale"] is None and r["sqnr_db"] is None for d in entry["quant"].values()
                       for r in d.values())
            continue
        assert entry["amax"] == ref.exact_max(x) and entry["count"] == x.size
        if site in fake.modules:
            assert entry["module"] == fake.modules[site] and entry["fused_expert"] == (site in fake.fused)
        for dtype in DTYPES:
            assert set(entry["quant"][dtype]) == set(POLICIES)
            for policy in POLICIES:
                check_row(entry["quant"][dtype][policy], x, policy, dtype, (site, dtype, policy))


def test_outlier_costs_show_in_sqnr(fake, tmp_path):
    """The massive outlier of layers.1 down_proj: max-clipped INT8 loses, a percentile clip saturates it."""
    export(fake.path, "json", tmp_path / "q.json")
    q = json.loads((tmp_path / "q.json").read_text())["sites"]["layers.1.mlp.down_proj.input"]["quant"]["int8"]
    assert q["max"]["clip"] == 900.0 and q["max"]["saturated_fraction"] == 0.0
    assert q["percentile:99.9"]["clip"] < 10 and q["percentile:99.9"]["saturated_fraction"] > 0
    assert q["max"]["underflow_fraction"] > 0.9    # the 0.05-scale bulk rounds to 0 with a 900/127 step
