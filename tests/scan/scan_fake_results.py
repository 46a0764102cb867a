"""A ScanResult built without a model (for writer / export / table tests)."""

from __future__ import annotations

import numpy as np

from scan_reference import site_stats

from maxact.scan.config import ScanConfig
from maxact.scan.result import SampleTable, ScanResult, SiteResult


def as_summary(ref: dict) -> dict:
    """Reference stats in the shape of ActivationStats.summary()."""
    s = {k: v for k, v in ref.items() if k not in ("quantiles", "topk")}
    top = ref["topk"]
    s["topk"] = {"abs": np.array([t["abs"] for t in top], np.float32),
                 "value": np.array([t["value"] for t in top], np.float32),
                 "sample": np.array([t["sample"] for t in top], np.int64),
                 "position": np.array([t["position"] for t in top], np.int64),
                 "channel": np.array([t["channel"] for t in top], np.int64)}
    return s


def fake_result(num_layers: int = 2, channels: int = 8, num_samples: int = 3, model_type: str = "qwen2",
                big: float = 3000.0, moe: bool = False, seed: int = 0) -> ScanResult:
    rng = np.random.default_rng(seed)
    comps = [("embedding", None)]
    for i in range(num_layers):
        comps += [("attn", i), ("router" if moe and i else "gate", i), ("mlp", i), ("hidden", i)]
    comps.append(("final_norm", None))
    sites = {}
    lengths = np.array([4] * num_samples)
    sample = np.repeat(np.arange(num_samples), 4)
    position = np.tile(np.arange(4), num_samples)
    for comp, layer in comps:
        name = comp if layer is None else f"layers.{layer}.{comp}"
        x = rng.standard_normal((len(sample), channels)).astype(np.float32)
        if name == "layers.1.hidden":
            x[0, 3] = -big    # the carrier: sample 0, position 0, channel 3
        residual = comp in ("embedding", "attn", "mlp", "hidden", "final_norm")
        ref = site_stats(x, sample, position, topk=4, num_samples=num_samples, track_tokens=residual)
        first = None
        if residual:
            rest = np.abs(x[position != 0]).max()
            pos0 = np.abs(x[position == 0]).max()
            first = {"abs_max_without_pos0": float(rest), "abs_max_pos0": float(pos0),
                     "abs_max_with_pos0": float(max(rest, pos0))}
        sites[name] = SiteResult(name=name, component=comp, layer=layer, module=f"model.{name}",
                                 num_channels=channels, summary=as_summary(ref), quantiles=ref["quantiles"],
                                 calls=2, first_token=first)
    cfg = ScanConfig(model="random:tiny", corpus="c.jsonl", out="unused")
    md = {"model_name": "tiny", "model_path": "random:tiny", "model_type": model_type,
          "num_layers": num_layers, "hidden_size": channels, "max_seq_len": 4096,
          "corpus": {"path": "c.jsonl", "num_samples": num_samples}}
    samples = SampleTable(category=np.zeros(num_samples, np.int32), category_names=["web"],
                          num_tokens=lengths.astype(np.int64), corpus_index=np.arange(num_samples))
    return ScanResult(config=cfg, metadata=md, sites=sites, samples=samples)
