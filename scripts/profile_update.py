"""Where the time of one ActivationStats.update goes on the GPU, per feature set: CPU time to issue an
update, GPU time per update, and the kernels that take it (torch.profiler).

Usage: python scripts/profile_update.py [ROWS COLS]   (bf16 activations as in benchmarks/test_kernels.py)
"""

import sys
import time

import torch

from maxact_kernels import ActivationStats

sys.path.insert(0, ".")
from benchmarks.test_kernels import FEATURES, activations, row_ids  # noqa: E402

rows, cols = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (16384, 4096)
dev = torch.device("cuda")
x = activations((rows, cols), dev)
sids, pos = row_ids(rows, dev)
for features in FEATURES:
    for mask in (None, torch.ones(rows, dtype=torch.bool, device=dev)):
        st = ActivationStats(cols, device=dev, **FEATURES[features])
        for _ in range(3):
            st.update(x, mask, sids, pos)
        torch.cuda.synchronize()
        n = 20
        t0 = time.perf_counter()
        for _ in range(n):
            st.update(x, mask, sids, pos)
        t_issue = (time.perf_counter() - t0) / n
        torch.cuda.synchronize()
        t_wall = (time.perf_counter() - t0) / n
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                st.update(x, mask, sids, pos)
            torch.cuda.synchronize()
        kern = [(e.key, e.device_time_total / 5, e.count / 5) for e in prof.key_averages() if e.device_time_total > 0]
        gpu = sum(k[1] for k in kern)
        print(f"{features:16s} mask={'ones' if mask is not None else 'none'}: issue {t_issue * 1e6:7.1f} us, "
              f"wall {t_wall * 1e6:7.1f} us, GPU {gpu:7.1f} us per update", flush=True)
        for name, us, count in sorted(kern, key=lambda k: -k[1])[:6]:
            print(f"    {us:8.1f} us  x{count:.0f}  {name[:100]}", flush=True)
