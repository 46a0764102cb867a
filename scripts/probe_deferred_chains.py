"""How much of a full update the side streams give back: back-to-back full updates of one state (device time,
the benchmark's bf16 activations, [16384, 4096] and [16384, 12288]), each update followed by
``settle()`` (the current stream waits for its top-k and token kernels, as before v13) against updates left
to overlap (settled once at the end). Prints the device time per update and its fraction of a copy.
Usage: PYTHONPATH=. python scripts/probe_deferred_chains.py"""

import sys

import torch

sys.path.insert(0, "benchmarks")
from conftest import cuda_time_ms  # noqa: E402
from test_kernels import FEATURES, activations, rotating_updates, row_ids  # noqa: E402

from maxact_kernels import ActivationStats  # noqa: E402

dev = torch.device("cuda")


def timed(shape, features, joined):
    xs = [activations(shape, dev, seed) for seed in range(3)]
    mask = torch.ones(shape[0], dtype=torch.bool, device=dev)
    sids, pos = row_ids(shape[0], dev)
    st = ActivationStats(shape[1], device=dev, **FEATURES[features])
    step = rotating_updates(st, xs, mask, sids, pos)

    def update():
        step()
        if joined:
            st.settle()

    update()
    torch.cuda.synchronize()
    return cuda_time_ms(update, iters=20, repeats=5, finish=st.settle)


for shape in [(16384, 4096), (16384, 12288)]:
    src = activations(shape, dev)
    dst = torch.empty_like(src)
    copy = cuda_time_ms(lambda: dst.copy_(src))
    for features in ("full_candidates", "full"):
        row = [f"{features:16s} {str(list(shape)):15s} copy {copy * 1e3:6.1f} us"]
        for joined in (True, False):
            t = timed(shape, features, joined)
            row.append(f"{'settled each update' if joined else 'side streams'} {t * 1e3:6.1f} us "
                       f"{copy / (2 * t):.3f} of copy")
        print(" | ".join(row), flush=True)
