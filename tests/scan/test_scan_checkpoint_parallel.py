"""Atomic checkpoints, compatibility checks, and the deterministic token-balanced sharding."""

from __future__ import annotations

import os

import pytest
import torch

from maxact.scan import checkpoint as ck
from maxact.scan.config import ScanConfig
from maxact.scan.errors import ScanError
from maxact.scan.parallel import SingleProcess, shard_by_tokens


def _ckpt(n=3):
    states = {"layers.0.hidden": {"counts": torch.arange(4), "sums": torch.rand(3, dtype=torch.float64)},
              "layers.0.hidden#pos0": {"counts": torch.zeros(4, dtype=torch.int64)}}
    return ck.Checkpoint(fingerprint=ScanConfig(model="m").measurement_fingerprint(), plan_hash="abc",
                         finished_batches=list(range(n)), states=states, counters={"oom_splits": 1})


def test_save_load_round_trip_is_exact(tmp_path):
    c = _ckpt()
    path = ck.save(tmp_path, c)
    assert path == tmp_path / "scan.pt" and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    back = ck.load(tmp_path)
    assert back.finished_batches == [0, 1, 2] and back.counters == {"oom_splits": 1}
    for name, sd in c.states.items():
        for k, v in sd.items():
            assert torch.equal(back.states[name][k], v) and back.states[name][k].dtype == v.dtype


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ck.save(tmp_path, _ckpt(2))

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        ck.save(tmp_path, _ckpt(5))
    monkeypatch.undo()
    assert ck.load(tmp_path).finished_batches == [0, 1]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_resume_refuses_other_settings_or_plan(tmp_path):
    c = _ckpt()
    other = ScanConfig(model="m", topk=3).measurement_fingerprint()
    with pytest.raises(ScanError, match="topk: 16 -> 3"):
        ck.check_compatible(c, other, "abc", tmp_path)
    with pytest.raises(ScanError, match="batch plan"):
        ck.check_compatible(c, c.fingerprint, "xyz", tmp_path)
    # output-only settings may change between runs
    ck.check_compatible(c, ScanConfig(model="m", out="elsewhere", sync_every=3).measurement_fingerprint(),
                        "abc", tmp_path)


def test_missing_or_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(ScanError, match="no checkpoint"):
        ck.load(tmp_path)
    (tmp_path / "scan.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ScanError, match="cannot read checkpoint"):
        ck.load(tmp_path)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_batch_once_and_balance_tokens(world):
    tokens = [4096] * 9 + [2048, 1024, 512, 300, 7]
    idx = list(range(len(tokens)))
    shards = shard_by_tokens(idx, tokens, world)
    assert sorted(i for s in shards for i in s) == idx
    loads = [sum(tokens[i] for i in s) for s in shards]
    assert max(loads) - min(loads) <= max(tokens)
    assert shards == shard_by_tokens(idx, tokens, world)   # deterministic
    assert all(s == sorted(s) for s in shards)


def test_fewer_batches_than_ranks_leaves_ranks_empty():
    shards = shard_by_tokens([5], [100], 3)
    assert shards == [[5], [], []]


def test_single_process_context_is_identity():
    ctx = SingleProcess()
    assert ctx.shard([3, 1], [5, 5]) == [3, 1] and ctx.num_steps(4) == 4
    assert ctx.any(True) and not ctx.any(False)
    assert ctx.gather_object(7) == [7] and ctx.broadcast_object(8) == 8
