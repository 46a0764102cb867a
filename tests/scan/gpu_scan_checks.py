"""GPU checks of the scan driver (run on a CUDA machine: ``python tests/scan/gpu_scan_checks.py``).

Prints one JSON line per check: host syncs per batch inside the loop (CUDA sync debug mode), the OOM
split on CUDA, and bare-forward vs scan throughput on the same batches in the same process.
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from maxact.scan import ScanConfig  # noqa: E402
from maxact.scan.bench import prepare, time_bare, time_scan  # noqa: E402
from maxact.scan.runner import LoopProbes, scan  # noqa: E402


def report(check, ok, **detail):
    print(json.dumps({"check": check, "ok": ok, **detail}), flush=True)


def check_no_sync(model: str, tokens_per_batch: int, corpus: str, max_seq_len: int = 4096):
    """Count CUDA host syncs from the start of each batch's transfer to the end of its forward.

    Only the sync-debug warnings count (not the one saying the mode is a prototype), and they are split
    by where they come from: maxact's own code must have none; the model's (e.g. transformers building
    the attention mask of a padded batch) are reported, since the bare forward makes them too."""
    ours, theirs, where = [], [], {}
    state = {"w": None}

    def before(_batch):
        state["w"] = warnings.catch_warnings(record=True)
        state["log"] = state["w"].__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def after(step, _index):
        torch.cuda.set_sync_debug_mode("default")
        logs = [w for w in state["log"] if "synchroniz" in str(w.message) and "prototype" not in str(w.message)]
        state["w"].__exit__(None, None, None)
        mine = [w for w in logs if "maxact" in Path(w.filename).parts or "maxact_kernels" in Path(w.filename).parts]
        ours.append(len(mine))
        theirs.append(len(logs) - len(mine))
        for w in logs:
            key = f"{Path(w.filename).name}:{w.lineno}"
            where[key] = where.get(key, 0) + 1

    with tempfile.TemporaryDirectory() as out:
        cfg = ScanConfig(model=model, corpus=corpus, dtype="bfloat16", tokens_per_batch=tokens_per_batch,
                         max_seq_len=max_seq_len, out=out, progress=False, sync_every=1000)
        scan(cfg, probes=LoopProbes(before_forward=before, after_batch=after))
    report(f"syncs_per_batch[{model}]", sum(ours) == 0, maxact_per_batch=ours, model_per_batch=theirs, where=where)


def check_oom_split():
    def oom_in_layer_1(model, _specs):
        def hook(_m, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[0] > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        model.layers[1].register_forward_pre_hook(hook, with_kwargs=True)

    with tempfile.TemporaryDirectory() as out:
        base = dict(model="random:tiny-qwen3", corpus="synthetic:6:0", dtype="float32", max_seq_len=64,
                    tokens_per_batch=6 * 64, progress=False)
        whole = scan(ScanConfig(out=out + "/a", **base))
        split = scan(ScanConfig(out=out + "/b", **base), probes=LoopProbes(on_model=oom_in_layer_1))
    counts_equal = all(whole.sites[n].summary["count"] == split.sites[n].summary["count"] for n in whole.sites)
    report("oom_split_cuda", counts_equal and split.metadata["oom_splits"] > 0,
           oom_splits=split.metadata["oom_splits"], counts_equal=counts_equal,
           m_whole=whole.global_max_abs, m_split=split.global_max_abs)


def check_throughput(model: str, tokens_per_batch: int, batches: int):
    """Bare forward vs full scan, and the scan without the Sun/top-k/channel extras or the pos-0 split."""
    cfg = ScanConfig(model=model, corpus=f"synthetic:{batches * tokens_per_batch // 4096 + 8}:0",
                     dtype="bfloat16", tokens_per_batch=tokens_per_batch, progress=False)
    session = prepare(cfg, batches)
    out = {"tokens": sum(b.num_tokens for b in session.batches), "sites": len(session.specs)}
    out["bare"] = time_bare(session, 1).tokens_per_s
    out["scan"] = time_scan(session, 1).tokens_per_s
    out["scan_no_pos0_split"] = time_scan(session, 1, first_token_split=False).tokens_per_s
    for name, change in (("scan_candidates", dict(token_median="candidates")),
                         ("scan_basic_only", dict(track_tokens=False, track_channels=False, topk=0))):
        session.config = cfg.replace(**change)
        out[name] = time_scan(session, 1).tokens_per_s
    out["bare_again"] = time_bare(session, 1).tokens_per_s
    ratios = {k + "_ratio": round(v / out["bare"], 4) for k, v in out.items() if k.startswith("scan")}
    report(f"throughput[{model}]", True, **out, **ratios)


def main():
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    only = sys.argv[1:]
    checks = [
        lambda: check_no_sync("random:tiny-qwen3", 4 * 256, "synthetic:40:0", max_seq_len=256),
        check_oom_split,
        lambda: check_throughput("random:qwen2.5-1.5b", 8 * 4096, 10),
        lambda: check_throughput("random:qwen3-8b", 4 * 4096, 8),
        lambda: check_no_sync("random:qwen3-8b", 4 * 4096, "synthetic:24:0"),
    ]
    if only:   # e.g. "throughput": run only those checks (by index)
        checks = [checks[int(i)] for i in only]
    for fn in checks:
        try:
            fn()
        except Exception as exc:  # report and go on with the next check
            report(getattr(fn, "__name__", "check"), False, error=repr(exc), tb=traceback.format_exc()[-2000:])
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
