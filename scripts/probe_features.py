"""Where the full update's time goes: back-to-back updates of one state (device time, the benchmark's bf16
activations rotated over three inputs) with the features switched on one group at a time, then the full update
with candidate medians with the fused pass leaving 0, 2, 4 and 8 SMs to the side streams, each against a copy
timed in the same process. Usage: PYTHONPATH=. python scripts/probe_features.py [ROWS,COLS ...]"""

import sys

import torch

from probe_common import activations, cuda_time_ms, update_time_ms  # noqa: E402
from test_kernels import FEATURES  # noqa: E402

from maxact_kernels import triton_update  # noqa: E402

dev = torch.device("cuda")
CAND = dict(track_tokens=True, token_median="candidates")
SETS = [
    ("basic, no mask", {}, False),
    ("basic, row mask", {}, True),
    ("+ sample peaks (row maxima)", dict(num_samples=64), True),
    ("+ channel maxima only", dict(track_channels=True), True),
    ("+ samples and channels", dict(num_samples=64, track_channels=True), True),
    ("+ samples, channels, top-16", dict(num_samples=64, track_channels=True, topk=16), True),
    ("+ samples, channels, tokens (candidates)", dict(num_samples=64, track_channels=True, **CAND), True),
    ("full, candidate medians", FEATURES["full_candidates"], True),
    ("full, every token's median", FEATURES["full"], True),
]


shapes = [tuple(int(v) for v in a.split(",")) for a in sys.argv[1:]] or [(16384, 4096), (16384, 12288), (4096, 1536)]
for shape in shapes:
    xs = [activations(shape, dev, seed) for seed in range(3)]
    dst = torch.empty_like(xs[0])
    copy = cuda_time_ms(lambda: dst.copy_(xs[0]))
    print(f"{list(shape)}: copy {copy * 1e3:.1f} us", flush=True)
    for name, kw, masked in SETS:
        t = update_time_ms(xs, kw, masked)
        print(f"  {name:42s} {t * 1e3:7.1f} us  {copy / (2 * t):.3f} of copy", flush=True)
    saved = triton_update.SPARE_SMS
    for spare in (0, 2, 4, 8):
        triton_update.SPARE_SMS = spare
        t = update_time_ms(xs, FEATURES["full_candidates"], True)
        print(f"  full, candidates, {spare} SMs left to the side streams {t * 1e3:7.1f} us  {copy / (2 * t):.3f}",
              flush=True)
    triton_update.SPARE_SMS = saved
