"""Bootstrap interval for M (issue 8, item 8) and range flags (item 6) in stats.json: computed by the
writer from the per-sample peaks and the exact histograms, equal to an independent computation from
the sidecar, and equal to what the report and the model card show."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from maxact import analysis as A
from maxact.card import build_card
from maxact.results import load_result
from maxact.scan import ScanConfig, pipeline
from maxact.scan.runner import scan

M_COMPONENTS = ("embedding", "hidden", "attn", "mlp", "final_norm")


def run(tmp_path, corpus, out="out", **kw):
    cfg = ScanConfig(model="random:tiny-qwen3", corpus=str(corpus), device="cpu", dtype="float32",
                     backend="reference", tokens_per_batch=30, out=str(tmp_path / out), progress=False, **kw)
    scan(cfg)
    return (json.loads((tmp_path / out / "stats.json").read_text()),
            load_file(str(tmp_path / out / "stats.safetensors")))


def exact_bootstrap(peaks: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the resampled max, by enumerating P(max* <= x) = (#{y <= x} / N)^N."""
    x = np.sort(peaks)
    n = x.size
    cdf = np.array([(np.count_nonzero(x <= v) / n) ** n for v in x])
    lo = x[np.argmax(cdf >= (1 - level) / 2)]
    hi = x[np.argmax(cdf >= 1 - (1 - level) / 2)]
    return float(lo), float(hi)


def test_bootstrap_interval_from_per_sample_peaks(tmp_path, corpus_file):
    doc, side = run(tmp_path, corpus_file)
    peaks = np.max([side[f"{n}/sample_abs_max"].astype(np.float64) for n, s in doc["sites"].items()
                    if s["component"] in M_COMPONENTS], axis=0)
    boot = doc["bootstrap_m"]
    assert boot["n_samples"] == 9 and boot["level"] == 0.95
    assert boot["M"] == doc["global_max_abs"] == peaks.max() and boot["upper"] == boot["M"]
    assert (boot["lower"], boot["upper"]) == exact_bootstrap(peaks)
    assert boot["lower"] <= boot["upper"]
    # Monte Carlo agrees: the lower end is the 2.5 % quantile of resampled maxima (4000 replicates,
    # standard error of a share near 2.5 % about 0.25 %)
    rng = np.random.default_rng(0)
    reps = np.array([peaks[rng.integers(0, 9, 9)].max() for _ in range(4000)])
    assert np.mean(reps <= boot["lower"]) >= 0.025 - 0.01 and np.mean(reps < boot["lower"]) <= 0.025 + 0.01
    # the report and the card read the same interval from the result
    ckpt = load_result(tmp_path / "out")
    ci = A.bootstrap_ci(A.sample_peaks(ckpt))
    assert (ci.lower, ci.upper, ci.M) == (boot["lower"], boot["upper"], boot["M"])
    card = build_card(ckpt)
    assert (card.bootstrap.lower, card.bootstrap.upper) == (boot["lower"], boot["upper"])
    assert ckpt.extra["bootstrap_m"] == boot


def test_quiet_model_has_no_range_flags(tmp_path, corpus_file):
    doc, _ = run(tmp_path, corpus_file)
    flags = doc["range_flags"]
    assert flags["M"] == doc["global_max_abs"] < 448
    assert not flags["fp16_overflow"] and not flags["fp8_e4m3_unscaled_overflow"]
    assert flags["sites_over_fp16"] == [] and flags["messages"] == []
    for name, site in doc["sites"].items():
        r = site["range"]
        assert r["fp16_overflow"] is False and r["fp16_overflow_count"] == 0
        assert {(x["format"], x["policy"]) for x in r["scaled"]} == {("fp8_e4m3", "max"), ("fp8_e5m2", "max")}
        for x in r["scaled"]:
            assert x["saturated_fraction"] == 0.0 and x["scale"] == pytest.approx(x["clip"] / A.get_format(x["format"]).qmax)


def test_overflowing_token_is_flagged(tmp_path, corpus_file, monkeypatch):
    """One token id's embedding made 1e5 on a channel: above float16 and FP8 E5M2 wherever it lands."""
    corpus_ids = [json.loads(line)["input_ids"] for line in corpus_file.read_text().splitlines()]
    token = corpus_ids[1][3]
    occurrences = sum(row.count(token) for row in corpus_ids)
    real_load = pipeline.load_model

    def load_big(config, device):
        model = real_load(config, device)
        with torch.no_grad():
            model.model.get_input_embeddings().weight[token, 5] = 1e5
        return model

    monkeypatch.setattr(pipeline, "load_model", load_big)
    doc, side = run(tmp_path, corpus_file)
    flags = doc["range_flags"]
    assert flags["M"] >= 1e5 and flags["fp16_overflow"] and flags["fp8_e5m2_unscaled_overflow"]
    emb = doc["sites"]["embedding"]["range"]
    assert emb["fp16_overflow"] and emb["fp8_e4m3_unscaled_overflow"] and emb["fp8_e5m2_unscaled_overflow"]
    # values above 65504 at the embedding: the planted entry, once per occurrence of the token
    assert emb["fp16_overflow_count"] == occurrences
    over = [n for n, s in doc["sites"].items() if s["abs_max"] > 65504]
    assert flags["sites_over_fp16"] == over and "embedding" in over
    assert any("float16 maximum" in m for m in flags["messages"])
    assert any("E5M2" in m for m in flags["messages"])
    # the max-abs FP8 scale of the embedding flushes the site's small values to 0, as the histogram says
    hist = side["embedding/abs_hist"]
    for x in emb["scaled"]:
        assert x["underflow_fraction"] == A.underflow_fraction(hist, x["scale"], x["format"])
    listed = {(u["site"], u["format"]) for u in flags["fp8_underflow_max_scale"]}
    for x in emb["scaled"]:
        assert (("embedding", x["format"]) in listed) == (x["underflow_fraction"] > flags["underflow_flag"])
    # the report computes the same flags from the result
    ranges = A.checkpoint_ranges(load_result(tmp_path / "out"))
    assert ranges.fp16_overflow == flags["fp16_overflow"] and ranges.sites_over_fp16 == over
