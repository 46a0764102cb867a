"""Device time of the per-token median kernel (``cuda_median.row_median``, all rows) by variant, against a
copy of the same tensor in the same run; each variant's medians must equal the default variant's.

Usage: python scripts/time_row_median.py [ROWS COLS]   (bf16, activation-like values)
Variants: the packed-compare count with every e-th pair of words on integer halves (``int_every``), and the
all-integer count (``swar``).
"""

import sys

import torch
import triton.testing

from maxact_kernels import cuda_median

rows, cols = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (16384, 4096)
dev = torch.device("cuda")
gen = torch.Generator(device=dev).manual_seed(0)
xs = [(torch.randn(rows, cols, device=dev, generator=gen) * torch.exp(torch.randn(rows, cols, device=dev,
                                                                                   generator=gen))).bfloat16()
      for _ in range(3)]  # three inputs in turn, so L2 does not hold the one being read
amax = [x.float().abs().amax(dim=1) for x in xs]
out = torch.empty(rows, device=dev)
ms_copy = triton.testing.do_bench(lambda: xs[1].clone(), warmup=50, rep=300)
gbs = 2 * xs[0].numel() * 2 / ms_copy / 1e6
print(f"[{rows}, {cols}] bf16: copy {ms_copy * 1e3:.1f} us ({gbs:.0f} GB/s r+w)")
want = None
for name, swar, every in [("default", 0, 0), ("int_every=2", 0, 2), ("int_every=3", 0, 3), ("int_every=4", 0, 4),
                          ("swar", 1, 0)]:
    cuda_median._SWAR, cuda_median._INT_EVERY = swar, every
    i = [0]

    def run():
        i[0] = (i[0] + 1) % 3
        cuda_median.row_median(xs[i[0]], amax[i[0]], out)

    cuda_median.row_median(xs[0], amax[0], out)
    got = out.clone()
    want = got if want is None else want
    same = torch.equal(got, want)
    ms = triton.testing.do_bench(run, warmup=20, rep=200)
    frac = xs[0].numel() * 2 / (ms / 1e3) / (gbs * 1e9)
    print(f"  {name:12s} {ms * 1e3:7.1f} us  {frac:.3f} of copy  equal to default: {same}", flush=True)
