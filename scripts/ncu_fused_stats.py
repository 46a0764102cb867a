"""A few launches of the CUDA fused statistics kernel for Nsight Compute to profile.

    ncu --clock-control none -k regex:maxact_fused --launch-skip 6 --launch-count 3 \
        --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
        python3 scripts/ncu_fused_stats.py [ROWS COLS]

Launches, on bf16 randn data, 6 warm-up updates (so that the channel maxima are those of a site past its first
updates), then the three the command above profiles: a basic update, an update with row maxima and per-sample
peaks, and the same with channel maxima too.
"""

import sys

import torch

from maxact_kernels import cuda_hist as ch

rows, cols = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (16384, 4096)
dev = torch.device("cuda")
x = torch.randn(rows, cols, device=dev).to(torch.bfloat16)
counts = torch.zeros(4, dtype=torch.int64, device=dev)
sums = torch.zeros(3, dtype=torch.float64, device=dev)
minmax = torch.tensor([float("inf"), -float("inf")], device=dev)
hist = torch.zeros(32768, dtype=torch.int64, device=dev)
samples = dict(row_absmax=torch.empty(rows, device=dev),
               sample_ids=torch.arange(rows, device=dev) // 4096, sample_abs_max=torch.zeros(64, device=dev),
               sample_oor=torch.zeros(1, dtype=torch.int64, device=dev))
full = dict(samples, channel_abs_max=torch.zeros(cols, device=dev))
for _ in range(3):
    ch.fused_stats(x, None, counts, sums, minmax, hist)
for _ in range(3):
    ch.fused_stats(x, None, counts, sums, minmax, hist, **full)
ch.fused_stats(x, None, counts, sums, minmax, hist)
ch.fused_stats(x, None, counts, sums, minmax, hist, **samples)
ch.fused_stats(x, None, counts, sums, minmax, hist, **full)
torch.cuda.synchronize()
print("ok", counts.tolist())
