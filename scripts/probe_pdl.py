"""Programmatic dependent launch of the fused pass, on and off, in one process: back-to-back updates of one
state (device time, the benchmark's bf16 activations rotated over three inputs), the same updates with
``cuda_hist._PDL`` set to 0 and 1 in turn (two rounds each), against a copy timed in the same run. Then the
summaries of states updated with and without it are compared (they must be equal).
With ``between``: only basic updates with a mask on [16384, 4096], with nothing, an event record, or a wait on
an event long complete queued between them (what a full update's side streams put between its passes), off
and on. Usage: PYTHONPATH=. python scripts/probe_pdl.py [between]"""

import sys

import numpy as np
import torch

from probe_common import cuda_time_ms, update_time_ms  # noqa: E402
from test_kernels import FEATURES, activations, rotating_updates, row_ids  # noqa: E402

from maxact_kernels import ActivationStats, cuda_hist  # noqa: E402

dev = torch.device("cuda")
CASES = [("basic", False), ("basic", True), ("full_candidates", True)]


def timed(xs, features, masked):
    return update_time_ms(xs, FEATURES[features], masked, warmup=1)


def summaries_equal(xs, features, masked):
    rows, cols = xs[0].shape
    mask = torch.ones(rows, dtype=torch.bool, device=dev) if masked else None
    sids, pos = row_ids(rows, dev)
    out = []
    for pdl in (0, 1):
        cuda_hist._PDL = pdl
        st = ActivationStats(cols, device=dev, **FEATURES[features])
        for x in xs * 3:
            st.update(x, mask, sids, pos)
        out.append(st.summary())
    return [k for k in out[0] if not same(out[0][k], out[1][k], k in SUMS)]


SUMS = {"sum", "sum_sq", "abs_sum", "mean", "std", "rms", "abs_mean"}   # fp64 atomics: any order of adds


def same(a, b, close=False):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if close:
        return bool(np.isclose(a, b, rtol=1e-9, atol=0.0))
    a, b = np.asarray(a), np.asarray(b)
    return np.array_equal(a, b, equal_nan=a.dtype.kind == "f" and b.dtype.kind == "f")


def between(shape=(16384, 4096)):
    xs = [activations(shape, dev, seed) for seed in range(3)]
    mask = torch.ones(shape[0], dtype=torch.bool, device=dev)
    dst = torch.empty_like(xs[0])
    copy = cuda_time_ms(lambda: dst.copy_(xs[0]))
    done = torch.cuda.Event()
    done.record()
    torch.cuda.synchronize()
    mark = torch.cuda.Event()
    stream = torch.cuda.current_stream()
    for kind in ("nothing", "event record", "wait on a done event"):
        row = [f"basic mask, {kind:20s} between {str(list(shape)):15s} copy {copy * 1e3:6.1f} us"]
        for pdl in (0, 1, 0, 1):
            cuda_hist._PDL = pdl
            st = ActivationStats(shape[1], device=dev)
            step = rotating_updates(st, xs, mask)

            def update():
                step()
                if kind == "event record":
                    mark.record(stream)
                elif kind != "nothing":
                    stream.wait_event(done)

            update()
            t = cuda_time_ms(update, iters=20, repeats=5)
            row.append(f"pdl={pdl} {t * 1e3:6.1f} us {copy / (2 * t):.3f}")
        print(" | ".join(row), flush=True)
    cuda_hist._PDL = 1


if sys.argv[1:] == ["between"]:
    between()
    sys.exit(0)

for shape in [(16384, 4096), (16384, 12288), (4096, 1536)]:
    xs = [activations(shape, dev, seed) for seed in range(3)]
    dst = torch.empty_like(xs[0])
    copy = cuda_time_ms(lambda: dst.copy_(xs[0]))
    for features, masked in CASES:
        row = [f"{features + (' mask' if masked else ' no mask'):21s} {str(list(shape)):15s} copy {copy * 1e3:6.1f} us"]
        for pdl in (0, 1, 0, 1):
            cuda_hist._PDL = pdl
            t = timed(xs, features, masked)
            row.append(f"pdl={pdl} {t * 1e3:6.1f} us {copy / (2 * t):.3f}")
        print(" | ".join(row), flush=True)
    for features, masked in CASES:
        bad = summaries_equal(xs, features, masked)
        print(f"summaries with and without PDL, {features} mask={masked} {list(shape)}: "
              f"{'equal' if not bad else 'DIFFER in ' + ', '.join(bad)}", flush=True)
    cuda_hist._PDL = 1
