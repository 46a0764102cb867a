"""What each output of the fused CUDA pass costs on its own: back-to-back ``cuda_hist.fused_stats`` calls (the
benchmark's bf16 activations rotated over three inputs, a row mask of all true) with the row maxima, the
per-sample peaks and the channel maxima switched on one at a time, on all SMs and with 2 left free (as the
full update leaves them to its side streams), each against a copy timed in the same process.
Usage: PYTHONPATH=. python scripts/probe_fused.py [ROWS,COLS ...]"""

import sys

import torch

sys.path.insert(0, "benchmarks")
from conftest import cuda_time_ms  # noqa: E402
from test_kernels import activations, row_ids  # noqa: E402

from maxact_kernels import cuda_hist  # noqa: E402

dev = torch.device("cuda")
SETS = [
    ("mask", dict()),
    ("mask + row maxima", dict(rows=True)),
    ("mask + row maxima + sample peaks", dict(rows=True, samples=True)),
    ("mask + channel maxima", dict(channels=True)),
    ("mask + row maxima + channel maxima", dict(rows=True, channels=True)),
    ("mask + all three", dict(rows=True, samples=True, channels=True)),
]


def timed(xs, rows=False, samples=False, channels=False, spare=0):
    n, c = xs[0].shape
    mask = torch.ones(n, dtype=torch.bool, device=dev)
    sids, _ = row_ids(n, dev)
    counts = torch.zeros(4, dtype=torch.int64, device=dev)
    sums = torch.zeros(3, dtype=torch.float64, device=dev)
    minmax = torch.tensor([float("inf"), -float("inf")], device=dev)
    hist = torch.zeros(32768, dtype=torch.int64, device=dev)
    kw = dict(spare_sms=spare)
    if rows:
        kw["row_absmax"] = torch.empty(n, device=dev)
    if samples:
        kw.update(sample_ids=sids, sample_abs_max=torch.zeros(64, device=dev),
                  sample_oor=torch.zeros(1, dtype=torch.int64, device=dev))
    if channels:
        kw["channel_abs_max"] = torch.zeros(c, device=dev)
    turn = [0]

    def call():
        turn[0] = (turn[0] + 1) % len(xs)
        cuda_hist.fused_stats(xs[turn[0]], mask, counts, sums, minmax, hist, **kw)

    for _ in range(6):
        call()
    torch.cuda.synchronize()
    return cuda_time_ms(call, iters=20, repeats=5)


shapes = [tuple(int(v) for v in a.split(",")) for a in sys.argv[1:]] or [(16384, 4096), (16384, 12288)]
for shape in shapes:
    xs = [activations(shape, dev, seed) for seed in range(3)]
    dst = torch.empty_like(xs[0])
    copy = cuda_time_ms(lambda: dst.copy_(xs[0]))
    print(f"{list(shape)}: copy {copy * 1e3:.1f} us", flush=True)
    for spare in (0, 2):
        for name, kw in SETS:
            t = timed(xs, spare=spare, **kw)
            print(f"  {spare} SMs free  {name:36s} {t * 1e3:7.1f} us  {copy / (2 * t):.3f} of copy", flush=True)
