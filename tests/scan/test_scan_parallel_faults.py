"""A rank that fails mid-scan ends the whole torchrun job with its error, within a bounded time: a rank
that raises (its peers see the connection close), and a rank that hangs (its peers give up after
``--dist-timeout``). The failure is injected by the MAXACT_TEST_FAULT hook the loop checks."""

from __future__ import annotations

import pytest
from scan_helpers import write_corpus
from scan_torchrun import TINY, run, torchrun_cmd

from maxact.scan.parallel import FAULT_ENV, InjectedFault, fault_injector

LENGTHS = [9, 14, 5, 14, 7, 3, 11, 14, 6]


def test_a_rank_raising_mid_scan_ends_the_job_with_its_error(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", LENGTHS)
    done = run(torchrun_cmd(2, *TINY, "--corpus", str(corpus), "-q", "--out", str(tmp_path / "out")),
               tmp_path, timeout=120, env={FAULT_ENV: "1:2"}, check=False)
    assert done.returncode != 0
    assert "InjectedFault: injected failure on rank 1 after 2 batches" in done.stderr
    assert "maxact.scan FAILED" in done.stderr   # torchrun's summary: the job failed, not hung
    assert done.seconds < 60
    assert not (tmp_path / "out" / "stats.json").exists()


def test_a_hung_rank_makes_the_others_fail_after_the_timeout(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", LENGTHS)
    done = run(torchrun_cmd(2, *TINY, "--corpus", str(corpus), "-q", "--dist-timeout", "4",
                            "--out", str(tmp_path / "out")),
               tmp_path, timeout=120, env={FAULT_ENV: "1:2:hang"}, check=False)
    assert done.returncode != 0
    # rank 0 names what happened; rank 1's hang ends when torchrun stops it
    assert "PeerFailure: rank 0:" in done.stderr and "--dist-timeout 4 s" in done.stderr, done.stderr[-3000:]
    assert "rank 1 hangs after 2 batches" in done.stderr
    assert done.seconds < 60


def test_fault_hook_parses_and_targets_one_rank():
    assert fault_injector(0, {}) is None
    assert fault_injector(0, {FAULT_ENV: "1:3"}) is None   # another rank's fault
    fire = fault_injector(1, {FAULT_ENV: "1:3"})
    fire(2, lambda: False)   # not yet
    with pytest.raises(InjectedFault, match="rank 1 after 3 batches"):
        fire(3, lambda: False)
    hang = fault_injector(0, {FAULT_ENV: "0:1:hang"})
    with pytest.raises(InjectedFault):   # a hang ends once a stop is requested
        hang(1, lambda: True)
    with pytest.raises(ValueError, match="mode"):
        fault_injector(0, {FAULT_ENV: "0:1:explode"})
