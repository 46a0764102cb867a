"""Fabricate a small maxact result (stats.json + stats.safetensors, docs/CONTRACTS.md section 4) from
known raw activations, so the analysis, report and card tests can compare every number with a direct
computation on the same raw values (and run before the scanner exists).

The raw activations imitate a model with a massive activation: a spike written by one layer's MLP
into one channel of one token is carried by every later hidden state; a gate pre-activation spike
(larger still) must not count towards M.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

HIST_BINS = 32768
QUANTILES = (0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999)
RESIDUAL = ("embedding", "attn", "mlp", "hidden", "final_norm")
CATEGORIES = ("code", "web", "zh")


@dataclass
class Fabricated:
    path: Path  # stats.json
    raw: dict[str, list[np.ndarray]]  # site -> per-sample [T_i, C] float32 arrays (bf16 values)
    components: dict[str, tuple[str, int | None]]  # site -> (component, layer)
    category: np.ndarray
    category_names: tuple[str, ...]
    corpus_index: np.ndarray


def bf16(x: np.ndarray) -> np.ndarray:
    """Round to bf16 and back to float32 (the values a bf16 model produces)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).bfloat16().float().numpy()


def abs_hist(values: np.ndarray) -> np.ndarray:
    """The contract's |x| histogram: bin = float32 bits of |x| >> 16."""
    a = np.abs(np.asarray(values, dtype=np.float32)).ravel()
    return np.bincount(a.view(np.uint32) >> 16, minlength=HIST_BINS).astype(np.int64)


def _raw_activations(num_layers, hidden, lengths, rng, massive, gate_spike):
    raw: dict[str, list[np.ndarray]] = {}
    comps: dict[str, tuple[str, int | None]] = {}

    def put(name, comp, layer, arrays):
        raw[name] = [bf16(a) for a in arrays]
        comps[name] = (comp, layer)

    put("embedding", "embedding", None, [rng.normal(0, 0.02, (t, hidden)) for t in lengths])
    h = raw["embedding"]
    for i in range(num_layers):
        attn = [rng.normal(0, 0.5, (t, hidden)) for t in lengths]
        gate = [rng.normal(0, 2.0, (t, 2 * hidden)) for t in lengths]
        mlp = [rng.normal(0, 0.5, (t, hidden)) for t in lengths]
        if i == 1:  # the massive activation: token (3, 0), channel 5, carried by every later hidden state
            mlp[3][0, 5] = massive
            mlp[7][1, 2] = -0.6 * massive
        if i == 0:
            gate[1][2, 3] = gate_spike
        put(f"layers.{i}.attn", "attn", i, attn)
        put(f"layers.{i}.gate", "gate", i, gate)
        put(f"layers.{i}.mlp", "mlp", i, mlp)
        h = [bf16(hp + a + m) for hp, a, m in zip(h, raw[f"layers.{i}.attn"], raw[f"layers.{i}.mlp"])]
        put(f"layers.{i}.hidden", "hidden", i, h)
    put("final_norm", "final_norm", None, [x / np.sqrt((x * x).mean(-1, keepdims=True)) for x in h])
    return raw, comps


def _token_table(arrays: list[np.ndarray]):
    """Rows (sample, position) with their values, in (sample, position) order."""
    samples = np.concatenate([np.full(len(a), s) for s, a in enumerate(arrays)])
    positions = np.concatenate([np.arange(len(a)) for a in arrays])
    return np.concatenate(arrays), samples, positions


def sun_fields(arrays: list[np.ndarray], t_val: float, t_ratio: float) -> dict:
    """The contract's per-site ``sun`` dict computed directly (lower median as torch.median)."""
    x, samples, positions = _token_table(arrays)
    a = np.abs(x)
    tmax = a.max(1)
    tmed = torch.from_numpy(a).median(dim=1).values.numpy()
    ratio = tmax / np.maximum(tmed, np.finfo(np.float32).tiny)
    passed = (tmax > t_val) & (tmax > t_ratio * tmed)
    arg_ch = a.argmax(1)  # first channel holding the token max

    def pick(key):  # largest key, ties by (sample, position): rows are already in that order
        return int(np.flatnonzero(key == key.max())[0])

    r, p = pick(ratio), pick(tmax)
    return {
        "n_tokens": int(len(tmax)), "n_pass": int(passed.sum()), "t_val": t_val, "t_ratio": t_ratio,
        "mean_ratio": float(ratio.mean()), "std_ratio": float(ratio.std()),
        "max_ratio": float(ratio[r]), "max_ratio_abs": float(tmax[r]), "max_ratio_median": float(tmed[r]),
        "max_ratio_sample": int(samples[r]), "max_ratio_position": int(positions[r]),
        "max_ratio_channel": int(arg_ch[r]),
        "peak_abs": float(tmax[p]), "peak_median": float(tmed[p]), "peak_ratio": float(ratio[p]),
        "peak_sample": int(samples[p]), "peak_position": int(positions[p]), "peak_channel": int(arg_ch[p]),
    }


def topk_entries(arrays: list[np.ndarray], k: int, with_tokens: bool) -> list[dict]:
    x, samples, positions = _token_table(arrays)
    n_rows, n_ch = x.shape
    flat = x.ravel()
    rows = np.repeat(np.arange(n_rows), n_ch)
    ch = np.tile(np.arange(n_ch), n_rows)
    order = np.lexsort((ch, positions[rows], samples[rows], -np.abs(flat)))[:k]
    out = []
    for i in order:
        e = {"abs": float(abs(flat[i])), "value": float(flat[i]), "sample": int(samples[rows[i]]),
             "position": int(positions[rows[i]]), "channel": int(ch[i])}
        if with_tokens:
            e.update(token_id=1000 + e["position"], token=f"tok{e['position']}",
                     context=f"<s{e['sample']}> ... tok{e['position']} ...")
        out.append(e)
    return out


def site_record(arrays, component, layer, t_val, t_ratio, k, with_tokens) -> dict:
    x = np.concatenate(arrays).astype(np.float64)
    a = np.abs(x).ravel()
    n = a.size
    rec = {
        "component": component, "layer": layer, "module": f"model.{component}", "num_channels": int(x.shape[1]),
        "count": int(n), "mean": float(x.mean()), "std": float(x.std()), "rms": float(np.sqrt((x * x).mean())),
        "abs_mean": float(a.mean()), "min": float(x.min()), "max": float(x.max()), "abs_max": float(a.max()),
        "nan_count": 0, "posinf_count": 0, "neginf_count": 0,
        "quantiles": {str(q): float(np.quantile(a, q, method="inverted_cdf")) for q in QUANTILES},
        "sun": sun_fields(arrays, t_val, t_ratio) if component in RESIDUAL else None,
        "topk": topk_entries(arrays, k, with_tokens),
    }
    return rec


def fabricate_scan(
    out_dir: str | Path,
    *,
    num_layers: int = 4,
    hidden: int = 16,
    num_samples: int = 20,
    seed: int = 0,
    massive: float = 3000.0,
    gate_spike: float = 1.0e5,
    sidecar: bool = True,
    topk: int = 8,
    with_tokens: bool = True,
    model_name: str = "tiny-fab",
    t_val: float = 100.0,
    t_ratio: float = 1000.0,
) -> Fabricated:
    """Write ``out_dir/stats.json`` (+ ``stats.safetensors`` when ``sidecar``) and return the raw data."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 11, num_samples)
    raw, comps = _raw_activations(num_layers, hidden, lengths, rng, massive, gate_spike)
    category = (np.arange(num_samples) % len(CATEGORIES)).astype(np.int32)
    corpus_index = (np.arange(num_samples) * 7 + 100).astype(np.int64)

    sites = {name: site_record(raw[name], comp, layer, t_val, t_ratio, topk, with_tokens)
             for name, (comp, layer) in comps.items()}
    eligible = [n for n, (c, _) in comps.items() if c not in ("gate", "router")]
    best = max(eligible, key=lambda n: sites[n]["abs_max"])
    best = next(n for n in eligible if sites[n]["abs_max"] == sites[best]["abs_max"])
    gval = sites[best]["max"] if abs(sites[best]["max"]) >= abs(sites[best]["min"]) else sites[best]["min"]
    stats = {
        "schema": "maxact.stats/1",
        "metadata": {
            "model_name": model_name, "model_path": f"/models/{model_name}", "model_type": "qwen3",
            "num_layers": num_layers, "hidden_size": hidden, "dtype": "bfloat16", "attn_implementation": "sdpa",
            "device": "cpu", "maxact_version": "0.1.0",
            "corpus": {"path": "tests/fake_corpus.jsonl", "hash": "0123abcd", "num_samples": num_samples,
                       "num_tokens": int(lengths.sum()),
                       "categories": {c: int((category == i).sum()) for i, c in enumerate(CATEGORIES)}},
            "max_seq_len": 16, "tokens_per_batch": 64, "wall_time_s": 0.5, "tokens_per_s": 300.0,
            "sun": {"t_val": t_val, "t_ratio": t_ratio}, "config": {},
        },
        "global_max_abs": sites[best]["abs_max"], "global_max_value": gval, "global_max_site": best,
        "sites": sites,
        "samples": {"count": num_samples, "category_names": list(CATEGORIES)},
    }
    path = out / "stats.json"
    path.write_text(json.dumps(stats, indent=1))
    if sidecar:
        tensors = {}
        for name, arrays in raw.items():
            tensors[f"{name}/abs_hist"] = abs_hist(np.concatenate(arrays))
            tensors[f"{name}/channel_abs_max"] = np.abs(np.concatenate(arrays)).max(0).astype(np.float32)
            tensors[f"{name}/sample_abs_max"] = np.array([np.abs(a).max() for a in arrays], dtype=np.float32)
        tensors["samples/category"] = category
        tensors["samples/num_tokens"] = lengths.astype(np.int64)
        tensors["samples/corpus_index"] = corpus_index
        save_file(tensors, str(out / "stats.safetensors"))
    return Fabricated(path, raw, comps, category, CATEGORIES, corpus_index)
