"""End to end: scan a tiny random model with --sites linear-inputs, export every format, and check each
number against an independent computation on the same tensors, captured by the test's own forward
pre-hooks on every nn.Linear of the model while the scan runs its batches."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import export_reference as ref
from maxact.export.__main__ import main
from maxact.scan import ScanConfig
from maxact.scan.runner import LoopProbes, scan

LENGTHS = (9, 14, 5, 14, 7, 3, 11, 14, 6, 12)


class LinearInputs:
    """Plain forward pre-hooks on every nn.Linear: the input rows of real tokens, per module name."""

    def __init__(self):
        self.rows: dict[str, list[np.ndarray]] = defaultdict(list)
        self.names: list[str] = []
        self.hooked_by_scan: set[str] = set()
        self.handles = []
        self.mask = None

    def on_model(self, model, specs):
        self.hooked_by_scan = {s.module_name for s in specs if s.capture == "input"}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                self.names.append(name)
                self.handles.append(module.register_forward_pre_hook(self._hook(name, module.in_features)))

    def before_forward(self, batch):
        self.mask = batch.row_mask().numpy()

    def _hook(self, name, width):
        def hook(_module, args):
            x = args[0].detach().float().reshape(-1, width).numpy()
            self.rows[name].append(x[self.mask].copy())
        return hook

    def tensor(self, name) -> np.ndarray:
        return np.concatenate(self.rows[name])

    def remove(self):
        for h in self.handles:
            h.remove()


def write_corpus(path, vocab=256, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for n in LENGTHS:
            fh.write(json.dumps({"input_ids": rng.integers(3, vocab, n).tolist(), "category": "web"}) + "\n")
    return path


@pytest.fixture(scope="module", params=["bfloat16", "float32"])
def scanned(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"e2e-{request.param}")
    mp = pytest.MonkeyPatch()
    mp.setenv("MAXACT_CACHE", str(tmp / "cache"))     # token caches stay in the test's folder
    cap = LinearInputs()
    cfg = ScanConfig(model="random:tiny-qwen3", corpus=str(write_corpus(tmp / "corpus.jsonl")), device="cpu",
                     dtype=request.param, sites="linear-inputs", tokens_per_batch=40, out=str(tmp / "scan"),
                     progress=False)
    try:
        scan(cfg, probes=LoopProbes(on_model=cap.on_model, before_forward=cap.before_forward))
    finally:
        cap.remove()
        mp.undo()
    assert sum(len(cap.tensor(n)) for n in cap.names[:1]) == sum(LENGTHS)   # every real token, once
    return tmp, cap


def test_smoothquant_keys_are_the_linear_names_and_values_the_channel_max(scanned):
    tmp, cap = scanned
    out = tmp / "act_scales.pt"
    assert main([str(tmp / "scan"), "--format", "smoothquant", "--out", str(out), "-q"]) == 0
    scales = torch.load(out, weights_only=True)
    assert cap.names and set(scales) == set(cap.names) == cap.hooked_by_scan
    for name in cap.names:
        assert scales[name].dtype == torch.float32
        np.testing.assert_array_equal(scales[name].numpy(), ref.channel_max(cap.tensor(name)), err_msg=name)


@pytest.mark.parametrize("policy, dtype", [("max", "int8"), ("percentile:99.99", "int8"),
                                           ("percentile:99.9", "fp8-e4m3"), ("mse", "int8")])
def test_input_scales(scanned, policy, dtype):
    tmp, cap = scanned
    out = tmp / f"scales-{policy}-{dtype}.safetensors"
    assert main([str(tmp / "scan"), "--format", "input-scales", "--out", str(out), "--policy", policy,
                 "--dtype", dtype, "-q"]) == 0
    tensors = load_file(str(out))
    doc = json.loads(out.with_name(out.name + ".json").read_text())
    fmt = dtype.replace("-", "_")
    assert set(tensors) == {n + ".input_scale" for n in cap.names} and doc["skipped"] == {}
    for name in cap.names:
        x = cap.tensor(name)
        row = doc["modules"][name]
        if policy == "max":
            clip = ref.exact_max(x)
        elif policy == "mse":
            assert ref.mse_error(x, row["clip"], fmt) <= ref.best_mse_error(x, fmt) * (1 + 1e-9), name
            clip = row["clip"]
        else:
            clip = ref.nearest_rank(x, float(policy.split(":")[1]))
        assert row["clip"] == clip, (name, row["clip"], clip)
        assert float(tensors[name + ".input_scale"]) == row["scale"] == ref.f32_scale(clip, fmt), name
        assert row["sqnr_db"] == pytest.approx(ref.sqnr_db(x, row["scale"], fmt), rel=1e-9), name
        assert row["saturated_fraction"] == ref.saturated(x, clip), name
        assert row["count"] == x.size


def test_json_amax_and_sqnr(scanned):
    tmp, cap = scanned
    out = tmp / "quant.json"
    assert main([str(tmp / "scan"), "--format", "json", "--out", str(out), "-q"]) == 0
    sites = json.loads(out.read_text())["sites"]
    assert set(sites) == {n + ".input" for n in cap.names}
    for name in cap.names:
        x, entry = cap.tensor(name), sites[name + ".input"]
        assert entry["module"] == name and entry["amax"] == ref.exact_max(x) and entry["count"] == x.size
        for fmt in ("int8", "int4", "fp8_e4m3", "fp8_e5m2"):
            for policy in ("max", "percentile:99.9", "percentile:99.99"):
                row = entry["quant"][fmt][policy]
                clip = ref.exact_max(x) if policy == "max" else ref.nearest_rank(x, float(policy[11:]))
                assert row["clip"] == clip and row["scale"] == ref.f32_scale(clip, fmt), (name, fmt, policy)
                assert row["sqnr_db"] == pytest.approx(ref.sqnr_db(x, row["scale"], fmt), rel=1e-9)
