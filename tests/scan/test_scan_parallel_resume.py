"""Checkpoint and resume under torchrun. A checkpoint holds the exact merge of every rank's state and the
union of their finished batches, written atomically by rank 0, so a resume continues exactly with the
same world size or another one. Each resumed scan is compared with one uninterrupted 1-process scan:
order statistics, histograms, top-k, per-channel and per-sample maxima bit for bit, sums to 1e-12."""

from __future__ import annotations

import json
import shutil

import pytest
from scan_helpers import write_corpus
from scan_torchrun import TINY, assert_same_results, run, scan_cmd, torchrun_cmd

from maxact.scan import checkpoint as ck
from maxact.scan.parallel import FAULT_ENV

LENGTHS = [9, 14, 5, 14, 7, 3, 11, 14, 6, 12, 8]   # 11 batches of one sample each (20-token budget)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The corpus, a shared token cache, and the uninterrupted 1-process scan to compare against."""
    root = tmp_path_factory.mktemp("resume")
    corpus = write_corpus(root / "c.jsonl", LENGTHS)
    args = [*TINY, "--corpus", str(corpus)]
    run(scan_cmd(*args, "-q", "--out", str(root / "reference")), root)
    return root, args


def _interrupted(root, out, cmd, env):
    done = run(cmd, root, timeout=120, env=env, check=False)
    assert done.returncode != 0, done.stderr[-2000:]
    assert not (out / "stats.json").exists()
    return done, ck.load(out / "checkpoint")


def test_crash_after_a_periodic_checkpoint_resumes_with_the_same_world_size(setup):
    root, args = setup
    out = root / "crash"
    # rank 1 dies after its 3rd batch; the checkpoint of steps 0-1 (2 batches per rank) is on disk
    _, saved = _interrupted(root, out, torchrun_cmd(2, *args, "-q", "--checkpoint-every", "2", "--out", str(out)),
                            {FAULT_ENV: "1:3"})
    assert saved.world_size == 2 and len(saved.finished_batches) == 4
    resumed = run(torchrun_cmd(2, *args, "--resume", "--out", str(out)), root)
    assert "resuming: 4 batches already done" in resumed.stderr
    assert_same_results(root / "reference", out)
    assert not (out / "checkpoint").exists()


def test_signal_on_one_rank_stops_all_and_resumes_with_another_world_size(setup):
    root, args = setup
    out = root / "signal2"
    # rank 1 gets SIGTERM after its 2nd batch; the ranks agree at the next batch, checkpoint, stop
    done, saved = _interrupted(root, out, torchrun_cmd(2, *args, "-q", "--out", str(out)),
                               {FAULT_ENV: "1:2:signal"})
    assert done.stderr.count("interrupted: stopped after 6 batches") == 2   # both ranks, same step
    assert saved.world_size == 2 and len(saved.finished_batches) == 6
    resumed = run(scan_cmd(*args, "--resume", "--out", str(out)), root)
    assert "resuming a checkpoint of world size 2 with world size 1" in resumed.stderr
    assert_same_results(root / "reference", out)


def test_one_process_checkpoint_resumes_on_two_ranks(setup):
    root, args = setup
    out = root / "signal1"
    done, saved = _interrupted(root, out, scan_cmd(*args, "-q", "--out", str(out)), {FAULT_ENV: "0:3:signal"})
    assert done.returncode == 130 and saved.world_size == 1 and len(saved.finished_batches) == 3
    backup = root / "signal1-copy"
    shutil.copytree(out, backup)
    resumed = run(torchrun_cmd(2, *args, "--resume", "--out", str(out)), root)
    assert "resuming a checkpoint of world size 1 with world size 2" in resumed.stderr
    assert_same_results(root / "reference", out)
    # and the same checkpoint resumed by one process: bit for bit, sums included (same fold order)
    run(scan_cmd(*args, "-q", "--resume", "--out", str(backup)), root)
    a, b = assert_same_results(root / "reference", backup)
    assert json.dumps(a["sites"]) == json.dumps(b["sites"])
