"""maxact_kernels: one-pass, sync-free, exact activation statistics for PyTorch tensors.

Depends only on torch, triton and numpy (plus ``cuda-core`` for the fast exact histogram on NVIDIA
GPUs), so any profiler can use it::

    from maxact_kernels import ActivationStats
    st = ActivationStats(4096, device="cuda", track_tokens=True, topk=16)
    st.update(hidden_states)          # [..., 4096], no host sync
    print(st.summary()["abs_max"], st.quantile(0.999))
"""

from .hist_math import HIST_BINS, bin_values, quantile_from_hist
from .stats import ActivationStats

__all__ = ["HIST_BINS", "ActivationStats", "bin_values", "quantile_from_hist"]
__version__ = "0.1.0"
