"""What the probe scripts share: device time of back-to-back updates of one state in steady state."""

import sys

import torch

sys.path.insert(0, "benchmarks")
from conftest import cuda_time_ms  # noqa: E402
from test_kernels import activations, rotating_updates, row_ids  # noqa: E402,F401

from maxact_kernels import ActivationStats  # noqa: E402


def update_time_ms(xs, features: dict, masked: bool, warmup: int = 6) -> float:
    """Mean device time of an update of one ActivationStats(``features``) state, the benchmark's way: ``xs``
    (bf16 activations) in turn, a row mask of all true when ``masked``, sample ids and positions, after
    ``warmup`` updates (6: past a state's first updates, where top-k filters little until its slots fill);
    the side work of the last update is timed too (``settle``)."""
    rows, cols = xs[0].shape
    dev = xs[0].device
    mask = torch.ones(rows, dtype=torch.bool, device=dev) if masked else None
    sids, pos = row_ids(rows, dev)
    st = ActivationStats(cols, device=dev, **features)
    update = rotating_updates(st, xs, mask, sids, pos)
    for _ in range(warmup):
        update()
    torch.cuda.synchronize()
    return cuda_time_ms(update, iters=20, repeats=5, finish=st.settle)
