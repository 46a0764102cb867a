"""``ActivationStats``: device-side statistics of one hooked activation site.

Like a quantization observer: ``update()`` folds a tensor into device tensors without any host sync,
``summary()`` is the one sync point, ``merge()`` combines states exactly (resume, several GPUs).
The semantics (DESIGN.md, CONTRACTS.md section 1) are the same on every backend; the float64
:mod:`maxact_kernels.reference` is their ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ._backend import load_triton_update, resolve_backend
from ._state import (
    ABS_SUM,
    FLOAT32_TINY,
    N_PASS,
    N_TOKENS,
    NAN,
    NEGINF,
    NON_NAN,
    POSINF,
    REC_PEAK,
    REC_RATIO,
    SUM,
    SUM_SQ,
    StatsConfig,
    StatsState,
    merge_states,
)
from .hist_math import quantile_from_hist

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _normalize_device(device: torch.device | str | int) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class ActivationStats:
    """Exact running statistics of one activation site, kept on the tensors' device.

    Args:
        num_channels: size of the last dimension of every tensor given to :meth:`update`.
        device: where the state lives; updates must come from this device.
        backend: ``"auto"`` (Triton kernels for CUDA tensors, with the CUDA C++ histogram when
            ``cuda-core`` is installed; the float64 reference for CPU tensors), ``"triton"`` (on CPU
            tensors: the real kernels in Triton's interpreter) or ``"reference"``.
        track_tokens: per token max and lower median |x| over channels, Sun et al. criterion
            (``max > sun_abs_threshold`` and ``max > sun_ratio_threshold * median``), max-ratio and
            peak tokens.
        track_channels: max |x| per channel.
        topk: keep the ``topk`` largest |x| with value, sample, position and channel.
        num_samples: max |x| per sample id in ``[0, num_samples)``.
        sun_abs_threshold, sun_ratio_threshold: the criterion's thresholds (compared in float64).
        token_median: ``"all"`` computes every token's median (mean/std of the ratio available);
            ``"candidates"`` only for tokens whose max exceeds ``sun_abs_threshold`` and each update's
            peak rows (much cheaper): ``n_tokens``, ``n_pass`` and the peak token are unchanged,
            ``max_ratio`` is then over the tokens whose max exceeds ``sun_abs_threshold`` (NaN if
            none) and ``mean_ratio``/``std_ratio`` are None.

    Within one update, ties (top-k, token records) break by row index: feed rows in (sample,
    position) order, as maxact does, so that any chunking + :meth:`merge` is bit-identical.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        device: torch.device | str | int,
        backend: str = "auto",
        track_tokens: bool = False,
        track_channels: bool = False,
        topk: int = 0,
        num_samples: int = 0,
        sun_abs_threshold: float = 100.0,
        sun_ratio_threshold: float = 1000.0,
        token_median: str = "all",
    ) -> None:
        self.config = StatsConfig(
            num_channels=int(num_channels),
            track_tokens=bool(track_tokens),
            track_channels=bool(track_channels),
            topk=int(topk),
            num_samples=int(num_samples),
            sun_abs_threshold=float(sun_abs_threshold),
            sun_ratio_threshold=float(sun_ratio_threshold),
            token_median=token_median,
        )
        self.device = _normalize_device(device)
        self.backend = resolve_backend(backend, self.device)
        self._state = StatsState(self.config, self.device)
        self._impl = None

    # ------------------------------------------------------------------ properties
    @property
    def num_channels(self) -> int:
        return self.config.num_channels

    @property
    def state(self) -> StatsState:
        """The raw device tensors (layout in :mod:`maxact_kernels._state`), after :meth:`settle`."""
        self._state.settle()
        return self._state

    def settle(self) -> None:
        """Make torch's current stream wait for this state's queued GPU work (no host sync).

        On a GPU the kernels after each update's fused pass (top-k, token medians and records) run on side
        streams and nothing waits for them, so that the current stream goes on with the model. Every reader
        here (:meth:`summary`, :meth:`state_dict`, :meth:`merge`, :attr:`state`...) settles first; call it
        yourself only to time updates with events on the current stream, or to use the tensors on another
        stream."""
        self._state.settle()

    def _backend_module(self):
        if self._impl is None:
            if self.backend == "reference":
                from . import reference

                self._impl = reference
            else:
                self._impl = load_triton_update(self.device)
        return self._impl

    # ------------------------------------------------------------------ update
    def _prepare(self, x, mask, sample_ids, positions):
        """Validate and flatten to [rows, C] plus per-row tensors (device ops only, no sync)."""
        c = self.config.num_channels
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in _DTYPES:
            raise TypeError(f"x must be bfloat16, float16 or float32, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != c:
            raise ValueError(f"x must have shape [..., {c}], got {tuple(x.shape)}")
        if _normalize_device(x.device) != self.device:
            raise ValueError(f"x is on {x.device} but this ActivationStats lives on {self.device}")
        x2d = x.reshape(-1, c)
        if c > 1 and x2d.stride(1) != 1:
            x2d = x2d.contiguous()
        rows = x2d.shape[0]

        def per_row(t, name, dtype):
            if t is None:
                return None
            if not isinstance(t, torch.Tensor):
                t = torch.as_tensor(t, device=self.device)
            if t.numel() != rows:
                raise ValueError(f"{name} must have one entry per row ({rows}), got shape {tuple(t.shape)}")
            if t.device != x.device:
                raise ValueError(f"{name} is on {t.device}, x on {x.device}")
            t = t.reshape(-1)
            if dtype is torch.bool:
                return t if t.dtype == torch.bool else t != 0
            return t if t.dtype == dtype else t.to(dtype)

        return (
            x2d,
            per_row(mask, "mask", torch.bool),
            per_row(sample_ids, "sample_ids", torch.int64),
            per_row(positions, "positions", torch.int64),
        )

    @torch.no_grad()
    def update(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        sample_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> None:
        """Fold ``x`` (``[..., num_channels]``, bf16/fp16/fp32, any layout) into the statistics.

        ``mask``: bool per row (True = real token); ``sample_ids``, ``positions``: int per row
        (defaults: sample -1, position = row index within this update). No host synchronisation.
        Work is queued on torch's current stream; on a GPU the top-k and token kernels that follow the
        fused pass run on two side streams that nothing waits for until the state is read (:meth:`settle`).
        """
        x2d, mask, sample_ids, positions = self._prepare(x, mask, sample_ids, positions)
        if x2d.shape[0] == 0:
            return
        if x2d.shape[0] >= 2**32 - 1:
            raise ValueError("an update holds at most 2**32 - 2 rows")
        self._backend_module().update(self._state, x2d, mask, sample_ids, positions)

    # ------------------------------------------------------------------ results
    def summary(self) -> dict:
        """All statistics as plain Python / numpy (the one host sync). Keys: CONTRACTS.md section 1."""
        cfg = self.config
        st = self._state
        st.settle()
        if cfg.topk:
            st.topk_compact()
        with np.errstate(all="ignore"):  # inf - inf in variances of infinite ratios -> NaN, on purpose
            return self._summary_from_host(
                {name: getattr(st, name).detach().cpu().numpy() for name in st.persistent_names()}
            )

    def _summary_from_host(self, host: dict) -> dict:
        cfg = self.config
        counts, sums, minmax = host["counts"], host["sums"], host["minmax"]
        count = int(counts[NON_NAN])
        n_finite = count - int(counts[POSINF]) - int(counts[NEGINF])
        nan = float("nan")
        mean = sums[SUM] / n_finite if n_finite else nan
        mean_sq = sums[SUM_SQ] / n_finite if n_finite else nan
        out = {
            "count": count,
            "sum": float(sums[SUM]),
            "sum_sq": float(sums[SUM_SQ]),
            "abs_sum": float(sums[ABS_SUM]),
            "mean": float(mean),
            "std": math.sqrt(max(mean_sq - mean * mean, 0.0)) if n_finite else nan,
            "rms": math.sqrt(mean_sq) if n_finite else nan,
            "abs_mean": float(sums[ABS_SUM] / n_finite) if n_finite else nan,
            "min": float(minmax[0]) if count else nan,
            "max": float(minmax[1]) if count else nan,
            "abs_max": float(max(-minmax[0], minmax[1])) if count else nan,
            "nan_count": int(counts[NAN]),
            "posinf_count": int(counts[POSINF]),
            "neginf_count": int(counts[NEGINF]),
            "abs_hist": host["abs_hist"].astype(np.int64),
        }
        if cfg.track_tokens:
            out["sun"] = self._sun_summary(host)
        if cfg.track_channels:
            out["channel_abs_max"] = host["channel_abs_max"].astype(np.float32)
        if cfg.topk:
            keep = host["topk_abs"][: cfg.topk] >= 0
            index = host["topk_index"][: cfg.topk][keep]
            out["topk"] = {
                "abs": host["topk_abs"][: cfg.topk][keep].astype(np.float32),
                "value": host["topk_value"][: cfg.topk][keep].astype(np.float32),
                "sample": index[:, 0].astype(np.int64),
                "position": index[:, 1].astype(np.int64),
                "channel": index[:, 2].astype(np.int64),
            }
        if cfg.num_samples:
            out["sample_abs_max"] = host["sample_abs_max"].astype(np.float32)
            out["sample_id_out_of_range"] = int(host["sample_oor"][0])
        return out

    def _sun_summary(self, host: dict) -> dict:
        cfg = self.config
        n_tokens = int(host["tok_counts"][N_TOKENS])
        rec_f, rec_i = host["tok_rec_f"], host["tok_rec_i"]
        nan = float("nan")
        out = {
            "n_tokens": n_tokens,
            "n_pass": int(host["tok_counts"][N_PASS]),
            "t_val": cfg.sun_abs_threshold,
            "t_ratio": cfg.sun_ratio_threshold,
            "median_scope": cfg.token_median,
            "mean_ratio": None,
            "std_ratio": None,
        }
        if cfg.token_median == "all":
            s, s2 = host["ratio_sums"]
            mean = s / n_tokens if n_tokens else nan
            out["mean_ratio"] = float(mean)
            out["std_ratio"] = math.sqrt(max(s2 / n_tokens - mean * mean, 0.0)) if n_tokens else nan
        for prefix, rec in (("max_ratio", REC_RATIO), ("peak", REC_PEAK)):
            has = rec_f[rec, 0] >= 0
            ints = [int(v) if has else -1 for v in rec_i[rec]]
            tmax, tmed = (float(rec_f[rec, 1]), float(rec_f[rec, 2])) if has else (nan, nan)
            if prefix == "max_ratio":
                out.update(max_ratio=float(rec_f[rec, 0]) if has else nan, max_ratio_abs=tmax, max_ratio_median=tmed)
            else:
                ratio = (1.0 if math.isinf(tmed) else tmax / max(tmed, FLOAT32_TINY)) if has else nan
                out.update(peak_abs=tmax, peak_median=tmed, peak_ratio=ratio)
            out.update({f"{prefix}_sample": ints[0], f"{prefix}_position": ints[1], f"{prefix}_channel": ints[2]})
        return out

    def quantile(self, q: float | Sequence[float]) -> float | np.ndarray:
        """Nearest-rank quantile(s) of |x| (numpy ``inverted_cdf``) from the histogram (syncs)."""
        self._state.settle()
        return quantile_from_hist(self._state.abs_hist.cpu().numpy(), q)

    # ------------------------------------------------------------------ merge / checkpoint
    @classmethod
    def merge(cls, states: Iterable[ActivationStats]) -> ActivationStats:
        """A new state equal to one that saw every update of ``states`` (in order); config must match."""
        states = list(states)
        if not states:
            raise ValueError("merge needs at least one state")
        first = states[0]
        out = cls(first.num_channels, device=first.device, backend=first.backend, **_config_kwargs(first.config))
        for other in states:
            merge_states(out._state, other._state)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the state tensors plus a ``config`` vector (checked by :meth:`load_state_dict`)."""
        st = self._state
        st.settle()
        if self.config.topk:
            st.topk_compact()
        sd = {"config": self.config.as_tensor()}
        for name in st.persistent_names():
            t = getattr(st, name)
            if name.startswith("topk_"):
                t = t[: self.config.topk]
            sd[name] = t.detach().clone()
        return sd

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Restore a :meth:`state_dict` (from any device) into this state."""
        st = self._state
        saved = state_dict.get("config")
        if saved is None or not torch.equal(saved.to(torch.float64).cpu(), self.config.as_tensor()):
            raise ValueError(f"state dict config {saved} does not match {self.config}")
        missing = [n for n in st.persistent_names() if n not in state_dict]
        if missing:
            raise KeyError(f"state dict lacks {missing}")
        st.reset()
        for name in st.persistent_names():
            dst = getattr(st, name)
            src = state_dict[name].to(dst.device)
            if name.startswith("topk_"):
                dst = dst[: self.config.topk]
            if src.shape != dst.shape or src.dtype != dst.dtype:
                raise ValueError(f"{name}: expected {dst.dtype}{tuple(dst.shape)}, got {src.dtype}{tuple(src.shape)}")
            dst.copy_(src)
        if self.config.topk:
            st.topk_fill = self.config.topk

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._state.reset()

    def __repr__(self) -> str:
        return f"ActivationStats({self.config}, device={self.device}, backend={self.backend!r})"


def _config_kwargs(cfg: StatsConfig) -> dict:
    kw = cfg.as_dict()
    kw.pop("num_channels")
    return kw
