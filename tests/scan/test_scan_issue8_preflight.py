"""Pre-flight (issue 8, item 7): the plan printed before the first batch (samples, tokens, batches,
longest sample, estimated peak memory) and the warm-up ETA; the refusal of a scan whose estimate
exceeds the free memory, naming a --tokens-per-batch that does fit; the memory model itself."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest
from transformers import AutoConfig

from maxact.scan import ScanConfig, ScanError, memory
from maxact.scan.__main__ import main as scan_main
from maxact.scan.preflight import Plan, Warmup, format_duration
from maxact.scan.runner import scan


def cfg(tmp_path, corpus, **kw):
    base = dict(model="random:tiny-qwen3", corpus=str(corpus), device="cpu", dtype="float32",
                backend="reference", tokens_per_batch=30, out=str(tmp_path / "out"), progress=False)
    base.update(kw)
    return ScanConfig(**base)


def test_plan_memory_and_eta_are_printed(tmp_path, corpus_file, caplog):
    with caplog.at_level(logging.INFO, logger="maxact.scan"):
        scan(cfg(tmp_path, corpus_file))
    messages = [r.message for r in caplog.records]
    plan = next(m for m in messages if m.startswith("plan:"))
    assert "9 samples, 83 tokens in " in plan and "longest sample 14 tokens" in plan
    assert re.search(r"in \d+ batches", plan)
    estimate = next(m for m in messages if m.startswith("estimate: peak memory"))
    for part in ("parameters", "statistics", "activations of the largest batch", "free on cpu"):
        assert part in estimate
    eta = [m for m in messages if m.startswith("warm-up:")]
    assert len(eta) == 1 and "tokens/s; ETA " in eta[0]
    # the order: plan and estimate before the loop, ETA after the warm-up batches
    assert messages.index(plan) < messages.index(estimate) < messages.index(eta[0])
    pre = json.loads((tmp_path / "out" / "stats.json").read_text())["metadata"]["preflight"]
    mem = pre["memory"]
    assert mem["total"] == mem["parameters"] + mem["states"] + mem["pending"] > 0
    assert mem["pending"] == mem["staging"] + mem["guard"] + mem["activations"] + mem["workspace"]
    assert pre["warmup"]["batches"] == 2 and pre["warmup"]["eta_s"] >= 0


def _estimate(tmp_path, corpus):
    """The memory block of a scan that fits, to place a refusal budget between its parts."""
    scan(cfg(tmp_path, corpus, out=str(tmp_path / "probe")))
    return json.loads((tmp_path / "probe" / "stats.json").read_text())["metadata"]["preflight"]["memory"]


def test_refusal_names_a_budget_that_fits(tmp_path, corpus_file, monkeypatch):
    mem = _estimate(tmp_path, corpus_file)
    # Room for the fixed part and two thirds of the largest batch's (28 tokens) activations: more than
    # the longest sample (14 tokens) needs alone.
    free = mem["staging"] + mem["guard"] + 2 * (mem["activations"] + mem["workspace"]) // 3
    monkeypatch.setattr(memory, "free_memory", lambda device: free)
    with pytest.raises(ScanError) as err:
        scan(cfg(tmp_path, corpus_file, out=str(tmp_path / "refused")))
    msg = str(err.value)
    assert "\n" not in msg and "does not fit on cpu" in msg and "--no-memory-check" in msg
    budget = int(re.search(r"--tokens-per-batch (\d+) fits", msg).group(1))
    assert 14 <= budget < 30                     # the longest sample (14) still fits in one batch
    assert not (tmp_path / "refused" / "stats.json").exists()
    # the suggested budget passes the same check
    scan(cfg(tmp_path, corpus_file, tokens_per_batch=budget, out=str(tmp_path / "fits")))
    assert (tmp_path / "fits" / "stats.json").exists()


def test_cli_exits_2_with_the_suggestion_and_can_be_overridden(tmp_path, corpus_file, monkeypatch, capsys):
    mem = _estimate(tmp_path, corpus_file)
    # room for about a fifth of the largest batch (28 tokens): less than the longest sample (14 tokens)
    free = mem["staging"] + mem["guard"] + (mem["activations"] + mem["workspace"]) // 5
    monkeypatch.setattr(memory, "free_memory", lambda device: free)
    argv = ["--model", "random:tiny-qwen3", "--corpus", str(corpus_file), "--device", "cpu", "--dtype",
            "float32", "--backend", "reference", "--tokens-per-batch", "30", "-q"]
    assert scan_main(argv + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: estimated peak memory") and err.count("\n") == 1
    # even one 14-token row is too much, so a shorter --max-seq-len is named
    assert "even one 14-token sample does not fit" in err
    seq = int(re.search(r"--max-seq-len (\d+) --tokens-per-batch (\d+) fits", err).group(1))
    assert 1 <= seq < 14
    fits = ["--max-seq-len", str(seq), "--tokens-per-batch", str(seq), "--out", str(tmp_path / "short")]
    assert scan_main(argv + fits) == 0            # the suggestion passes the same check
    assert scan_main(argv + ["--out", str(tmp_path / "b"), "--no-memory-check"]) == 0
    assert (tmp_path / "b" / "stats.json").exists()


def test_impossible_budget_says_no_batch_fits(tmp_path, corpus_file, monkeypatch):
    monkeypatch.setattr(memory, "free_memory", lambda device: 1024)
    with pytest.raises(ScanError, match="leave no room for a batch"):
        scan(cfg(tmp_path, corpus_file))


# -- the memory model --------------------------------------------------------------------------


def _qwen3_moe_config():
    return AutoConfig.for_model("qwen3_moe", hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                                num_experts=4, num_experts_per_tok=2, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=16, num_hidden_layers=2, vocab_size=256)


def test_model_shape_from_config():
    shape = memory.ModelShape.from_config(_qwen3_moe_config())
    assert (shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.head_dim) == (64, 96, 4, 2, 16)
    assert (shape.experts, shape.experts_per_token, shape.expert_intermediate) == (4, 2, 32)


def test_activation_formula():
    shape = memory.ModelShape(hidden=64, intermediate=96, heads=4, kv_heads=2, head_dim=16)
    t, b = 100, 2
    want = (3 * t * 64 * b + 2 * t * 64 * 4                                  # residual stream
            + 2 * t * (4 + 4) * 16 * b + 2 * t * 4 * 16 * b + t * 64 * b      # q, k, v, output, o_proj
            + 500 * b                                                         # 4-D mask
            + 4 * t * 96 * b)                                                 # dense MLP
    assert memory.activation_bytes(shape, t, 500, b, eager=False) == want
    assert memory.activation_bytes(shape, t, 500, b, eager=True) == want + 500 * 4 * (2 * b + 4)
    # linear in the tokens at a fixed attention size: what the budget search relies on
    one = memory.activation_bytes(shape, 1, 0, b, eager=False)
    assert memory.activation_bytes(shape, 1000, 0, b, eager=False) == 1000 * one


def test_budget_search_is_the_largest_that_fits():
    est = memory.Estimator(shape=memory.ModelShape(64, 96, 4, 2, 16), dtype_bytes=2, eager=True,
                           max_channels=96, workspace_per_element=16, parameters=10**6, states=10**5,
                           staging=1000, guard=0)
    free = est.pending(5000, 5000 * 512)
    t = memory.fitting_budget(est, free, seq_len=512, current=20000)
    assert t == 5000 - 5000 % 256 and est.pending(t, t * 512) <= free
    small = memory.fitting_budget(est, est.pending(700, 700 * 512), seq_len=512, current=20000)
    assert small == 700                                   # below 1024: not rounded
    assert memory.fitting_budget(est, est.pending(511, 511 * 512), seq_len=512, current=20000) is None
    s = memory.fitting_seq_len(est, est.pending(300, 300 * 300), seq_len=512)
    assert s == 300


def test_free_memory_on_cpu_with_and_without_psutil(monkeypatch):
    import torch

    with_psutil = memory.free_memory(torch.device("cpu"))
    assert isinstance(with_psutil, int) and with_psutil > 0
    monkeypatch.setitem(sys.modules, "psutil", None)     # import psutil now raises ImportError
    from_proc = memory.free_memory(torch.device("cpu"))
    assert isinstance(from_proc, int) and from_proc > 0


def test_warmup_eta_extrapolates_from_the_second_batch(monkeypatch):
    import torch
    from maxact.scan import preflight

    clock = iter([0.0, 5.0, 6.0])              # start, batch 0 after 5 s (compilation), batch 1 after 1 s
    monkeypatch.setattr(preflight.time, "perf_counter", lambda: next(clock))
    plan = Plan(num_samples=4, num_tokens=1000, num_batches=10, longest_sample=100, padded_tokens=1000,
                max_batch_rows=1, max_batch_tokens=100)
    w = Warmup(plan, local_tokens=1000, num_local_batches=10, device=torch.device("cpu"))
    w.start()
    assert w.batch_done(0, 100) is None
    line = w.batch_done(1, 100)
    assert line.startswith("warm-up: 2 batch(es), 200 tokens in 6.00 s; 100 tokens/s; ETA 8.0 s")
    assert plan.estimates["warmup"]["eta_s"] == pytest.approx(8.0)
    assert w.batch_done(2, 100) is None
    assert format_duration(3725) == "1 h 02 min" and format_duration(75) == "1 min 15 s"
