"""Fake scan results with known raw activations, written by the scanner's own writer
(maxact.scan.writer, CONTRACTS.md section 4), so every exported number can be checked against a direct
computation on the same raw values.

Sites: per layer the linear inputs of q_proj, o_proj, down_proj (wider), plus layer 1's fused experts
(aggregate ``experts.gate_up_proj`` and one per-expert site), a Linear whose hook never fired, one
float32-valued (not bf16) input, and a paper ``hidden`` site for the json table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maxact.scan.config import ScanConfig
from maxact.scan.result import SampleTable, ScanResult, SiteResult
from maxact.scan.writer import write_results

HIDDEN, INTER, ROWS, NUM_SAMPLES = 12, 20, 150, 5


@dataclass
class FakeScan:
    path: Path                       # the result directory
    raw: dict[str, np.ndarray]       # site -> float32 [rows, C] (empty rows for a never-fired site)
    modules: dict[str, str]          # site -> the module the export must name (site minus ".input")
    fused: set[str]                  # sites of fused experts
    never_fired: set[str]


def bf16(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).bfloat16().float().numpy()


def _hist(x: np.ndarray) -> np.ndarray:
    a = np.abs(x[~np.isnan(x)].astype(np.float32)).ravel()
    return np.bincount(a.view(np.uint32) >> 16, minlength=32768).astype(np.int64)


def _summary(x: np.ndarray, channels: bool) -> dict:
    x64 = x.astype(np.float64)
    n = x.size
    a = np.abs(x)
    nan = float("nan")
    s = {"count": n, "sum": float(x64.sum()), "sum_sq": float((x64 ** 2).sum()), "abs_sum": float(a.sum()),
         "mean": float(x64.mean()) if n else nan, "std": float(x64.std()) if n else nan,
         "rms": float(np.sqrt((x64 ** 2).mean())) if n else nan, "abs_mean": float(a.mean()) if n else nan,
         "min": float(x.min()) if n else nan, "max": float(x.max()) if n else nan,
         "abs_max": float(a.max()) if n else nan, "nan_count": 0, "posinf_count": 0, "neginf_count": 0,
         "abs_hist": _hist(x), "sun": None}
    if channels:
        s["channel_abs_max"] = a.max(0).astype(np.float32) if n else np.zeros(x.shape[1], np.float32)
    return s


def _raw(rng: np.random.Generator, linear: bool, paper: bool) -> tuple[dict, dict, dict, set, set]:
    raw, comps, module_field = {}, {}, {}
    fused, never = set(), set()
    if linear:
        for i in range(2):
            for proj, width, sd in (("self_attn.q_proj", HIDDEN, 1.0), ("self_attn.o_proj", HIDDEN, 0.3),
                                    ("mlp.down_proj", INTER, 0.05)):
                mod = f"layers.{i}.{proj}"
                x = rng.standard_t(4, (ROWS, width)) * sd
                if proj == "mlp.down_proj" and i == 1:
                    x[17, 3] = 900.0     # a massive outlier in one channel of one token
                    x[40, 3] = -350.0
                raw[mod + ".input"] = bf16(x)
                comps[mod + ".input"] = ("linear_input", i)
                module_field[mod + ".input"] = mod
        experts = "layers.1.mlp.experts"
        for site, rows in ((f"{experts}.gate_up_proj.input", ROWS), (f"{experts}.2.gate_up_proj.input", 40)):
            raw[site] = bf16(rng.normal(0, 2.0, (rows, HIDDEN)))
            comps[site] = ("linear_input", 1)
            module_field[site] = experts     # fused experts record the experts module
            fused.add(site)
        # float32 activations (a float32 scan): the histogram truncates them, the max does not
        site = "layers.0.mlp.up_proj.input"
        raw[site] = rng.normal(0, 1.3, (ROWS, HIDDEN)).astype(np.float32)
        comps[site], module_field[site] = ("linear_input", 0), "layers.0.mlp.up_proj"
        site = "layers.1.mlp.gate_proj.input"     # never fired
        raw[site] = np.zeros((0, HIDDEN), np.float32)
        comps[site], module_field[site] = ("linear_input", 1), "layers.1.mlp.gate_proj"
        never.add(site)
    if paper:
        for i in range(2):
            raw[f"layers.{i}.hidden"] = bf16(rng.normal(0, 4.0, (ROWS, HIDDEN)))
            comps[f"layers.{i}.hidden"] = ("hidden", i)
            module_field[f"layers.{i}.hidden"] = f"layers.{i}"
    return raw, comps, module_field, fused, never


def write_fake_scan(out_dir: str | Path, *, linear: bool = True, paper: bool = True, channels: bool = True,
                    seed: int = 0) -> FakeScan:
    """Write ``out_dir/stats.json`` + ``stats.safetensors`` with the scanner's writer."""
    rng = np.random.default_rng(seed)
    raw, comps, module_field, fused, never = _raw(rng, linear, paper)
    sites = {}
    for name, x in raw.items():
        comp, layer = comps[name]
        sites[name] = SiteResult(name=name, component=comp, layer=layer, module=module_field[name],
                                 num_channels=int(x.shape[1]), summary=_summary(x, channels), quantiles={},
                                 calls=0 if name in never else 3)
    samples = SampleTable(category=np.zeros(NUM_SAMPLES, np.int32), category_names=["web"],
                          num_tokens=np.full(NUM_SAMPLES, ROWS // NUM_SAMPLES, np.int64),
                          corpus_index=np.arange(NUM_SAMPLES, dtype=np.int64))
    md = {"model_name": "fake-linear", "model_type": "qwen3", "num_layers": 2, "hidden_size": HIDDEN,
          "dtype": "bfloat16", "corpus": {"path": "c.jsonl", "num_samples": NUM_SAMPLES, "num_tokens": ROWS}}
    result = ScanResult(config=ScanConfig(model="random:tiny", corpus="c.jsonl", out=str(out_dir)), metadata=md,
                        sites=sites, samples=samples)
    write_results(result, Path(out_dir))
    modules = {n: n[: -len(".input")] for n in raw if n.endswith(".input")}
    return FakeScan(Path(out_dir), raw, modules, fused, never)
