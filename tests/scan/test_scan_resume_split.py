"""Fault tolerance: resume after an interrupt equals an uninterrupted scan bit for bit; a batch split
after an out-of-memory error (raised mid-forward, after early hooks fired) equals the unsplit batch."""

from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from scan_helpers import write_corpus
from safetensors.numpy import load_file

from maxact.scan import ScanConfig, ScanInterrupted
from maxact.scan.runner import LoopProbes, scan

# Keys of stats.json metadata that legitimately differ between runs (timings, host, the resume flag).
VOLATILE = {"wall_time_s", "scan_time_s", "tokens_per_s", "created_unix", "config", "oom_splits", "preflight"}


def config(out, corpus, **kw):
    base = dict(model="random:tiny-qwen3", corpus=str(corpus), device="cpu", dtype="float32",
                backend="reference", tokens_per_batch=16, out=str(out), topk=6, progress=False)
    base.update(kw)
    return ScanConfig(**base)


def outputs(out):
    doc = json.loads((out / "stats.json").read_text())
    for k in VOLATILE:
        doc["metadata"].pop(k, None)
    return doc, load_file(str(out / "stats.safetensors"))


def differences(a, b, path=""):
    """Paths where two JSON trees differ (for readable failures)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only on one side" for k in set(a) ^ set(b)]
        for k in a.keys() & b.keys():
            out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if same(a, b) else [f"{path}: {a!r} != {b!r}"]


def same(a, b) -> bool:
    """Equality where NaN equals NaN (a Sun ratio over no candidate token is NaN on both sides)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def assert_identical(a, b):
    doc_a, side_a = a
    doc_b, side_b = b
    diff = differences(doc_a, doc_b)
    assert not diff, diff[:10]
    assert side_a.keys() == side_b.keys()
    for k in side_a:
        assert side_a[k].dtype == side_b[k].dtype and np.array_equal(side_a[k], side_b[k]), k


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "c.jsonl", [9, 14, 5, 14, 7, 3, 11, 14, 6, 12, 8])


@pytest.mark.parametrize("tight", [False, True])
def test_resume_after_sigint_is_bit_identical(tmp_path, corpus, tight, monkeypatch):
    if tight:   # position-0 staging folded at nearly every batch, so folds fall on both sides of the cut
        from maxact.scan import runner

        monkeypatch.setattr(runner, "first_token_capacity", lambda rows: rows)
    sync_every = 2
    scan(config(tmp_path / "full", corpus, sync_every=sync_every))
    reference = outputs(tmp_path / "full")
    assert reference[0]["metadata"]["num_batches"] >= 6

    def interrupt(step, _index):
        if step == 2:   # as if Ctrl-C arrived while batch 3 ran
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "cut"
    with pytest.raises(ScanInterrupted) as info:
        scan(config(out, corpus, sync_every=sync_every), probes=LoopProbes(after_batch=interrupt))
    assert info.value.checkpoint_path and (out / "checkpoint" / "scan.pt").exists()
    assert not (out / "stats.json").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handlers restored

    seen = []
    scan(config(out, corpus, resume=True, sync_every=sync_every),
         probes=LoopProbes(after_batch=lambda s, i: seen.append(i)))
    assert len(seen) == reference[0]["metadata"]["num_batches"] - 3    # only the missing batches ran
    assert_identical(outputs(out), reference)
    assert not (out / "checkpoint").exists()


def test_resume_after_crash_from_periodic_checkpoint(tmp_path, corpus):
    scan(config(tmp_path / "full", corpus))
    reference = outputs(tmp_path / "full")

    def crash(step, _index):
        if step == 4:
            raise RuntimeError("injected failure")

    out = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="injected"):
        scan(config(out, corpus, checkpoint_every=2), probes=LoopProbes(after_batch=crash))
    assert (out / "checkpoint" / "scan.pt").exists()
    seen = []
    scan(config(out, corpus, resume=True, checkpoint_every=2),
         probes=LoopProbes(after_batch=lambda s, i: seen.append(i)))
    assert len(seen) == reference[0]["metadata"]["num_batches"] - 4     # batches 0-3 were checkpointed
    assert_identical(outputs(out), reference)


def test_resume_refuses_changed_settings(tmp_path, corpus):
    out = tmp_path / "o"
    with pytest.raises(ScanInterrupted):
        scan(config(out, corpus), probes=LoopProbes(after_batch=lambda s, i: os.kill(os.getpid(), signal.SIGINT)))
    from maxact.scan import ScanError

    with pytest.raises(ScanError, match="topk"):
        scan(config(out, corpus, resume=True, topk=3))
    with pytest.raises(ScanError, match="no checkpoint"):
        scan(config(tmp_path / "empty", corpus, resume=True))


def _oom_in_layer_1(model, _specs):
    """Raise a CUDA OOM inside layer 1 for any batch of more than one row: the embedding and layer-0
    hooks have already folded that batch in by then, so only the state guard keeps counts right."""
    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
    model.layers[1].register_forward_pre_hook(hook, with_kwargs=True)


def test_oom_split_equals_unsplit_batch(tmp_path):
    # Equal lengths: no padding, so both runs do the same arithmetic per row.
    corpus = write_corpus(tmp_path / "c.jsonl", [8] * 6)
    scan(config(tmp_path / "whole", corpus, tokens_per_batch=48))
    whole = outputs(tmp_path / "whole")
    assert whole[0]["metadata"]["num_batches"] == 1
    result = scan(config(tmp_path / "split", corpus, tokens_per_batch=48),
                  probes=LoopProbes(on_model=_oom_in_layer_1, state_guard=True))
    assert result.metadata["oom_splits"] == 5          # 6 rows -> 3+3 -> 2+1+2+1
    split = outputs(tmp_path / "split")
    doc_w, doc_s = whole[0], split[0]
    for name, a in doc_w["sites"].items():
        b = doc_s["sites"][name]
        for key in a:
            if key in ("sum", "sum_sq", "abs_sum", "mean", "std", "rms", "abs_mean"):
                assert b[key] == pytest.approx(a[key], rel=1e-12, abs=1e-15), (name, key)
            elif key == "sun" and a["sun"] is not None:
                for k, v in a["sun"].items():
                    if k in ("mean_ratio", "std_ratio") and v is not None:
                        assert b["sun"][k] == pytest.approx(v, rel=1e-12), (name, k)
                    else:
                        assert same(b["sun"][k], v), (name, k)
            elif key != "calls":
                assert b[key] == a[key], (name, key)
    for k in whole[1]:
        assert np.array_equal(whole[1][k], split[1][k]), k


def test_oom_on_a_single_row_is_raised(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", [8])

    def always(_batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        scan(config(tmp_path / "o", corpus), probes=LoopProbes(before_forward=always, state_guard=True))
