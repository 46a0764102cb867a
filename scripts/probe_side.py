"""How the side streams' settings pace the full update with candidate medians: back-to-back updates (the
benchmark's bf16 activations rotated over three inputs) for each combination of the candidate-median kernel's
blocks, the SMs the fused pass leaves free, the side streams' priority and the top-k elements kernel's channel
block, against a copy timed in the same process.
Usage: PYTHONPATH=. python scripts/probe_side.py [ROWS,COLS ...]"""

import sys

import torch

from probe_common import activations, cuda_time_ms, update_time_ms  # noqa: E402
from test_kernels import FEATURES  # noqa: E402

from maxact_kernels import triton_topk, triton_update  # noqa: E402

dev = torch.device("cuda")
# (median blocks, spare SMs, side-stream priority, top-k elements channel block)
CONFIGS = [(4, 2, 0, 1024), (2, 2, 0, 1024), (4, 3, 0, 1024), (2, 3, 0, 1024), (4, 2, -1, 1024),
           (4, 2, 0, 256), (4, 2, 0, 4096), (2, 2, -1, 256), (4, 2, 0, 1024)]


shapes = [tuple(int(v) for v in a.split(",")) for a in sys.argv[1:]] or [(16384, 4096)]
for shape in shapes:
    xs = [activations(shape, dev, seed) for seed in range(3)]
    dst = torch.empty_like(xs[0])
    copy = cuda_time_ms(lambda: dst.copy_(xs[0]))
    print(f"{list(shape)}: copy {copy * 1e3:.1f} us", flush=True)
    for blocks, spare, prio, block_c in CONFIGS:
        triton_update.MEDIAN_BLOCKS, triton_update.SPARE_SMS = blocks, spare
        triton_update.SIDE_PRIORITY, triton_topk.GPU_BLOCK_C = prio, block_c
        triton_update._side_streams.cache_clear()
        t = update_time_ms(xs, FEATURES["full_candidates"], True)
        print(f"  median blocks {blocks}, {spare} SMs free, priority {prio:2d}, top-k channel block {block_c:4d}: "
              f"{t * 1e3:6.1f} us  {copy / (2 * t):.3f} of copy", flush=True)
