"""Device-side state of one :class:`~maxact_kernels.ActivationStats`: layout, reset and exact merges.

Every backend (the Triton kernels, the float64 reference, the CUDA histogram in ``cuda_hist.py``)
reads and writes the same tensors, named here:

=====================  =====================  ===============================================
attribute              dtype[shape]           meaning
=====================  =====================  ===============================================
``counts``             int64[4]               non-NaN, NaN, +inf, -inf element counts
``sums``               float64[3]             sum, sum of squares, sum of |x| over finite values
``minmax``             float32[2]             min, max over non-NaN values (init +inf, -inf)
``abs_hist``           int64[32768]           bin ``bits(|x|) >> 16`` (NaN excluded, inf -> 32640)
``channel_abs_max``    float32[C]             per channel max |x| (track_channels; init 0)
``sample_abs_max``     float32[N]             per sample max |x| (num_samples; init 0)
``sample_oor``         int64[1]               rows with a non-NaN value and a sample id outside [0, N)
``tok_counts``         int64[2]               tokens with a non-NaN value, tokens passing Sun
``ratio_sums``         float64[2]             sum of ratio and ratio**2 (token_median="all")
``tok_rec_f``          float64[2, 3]          records [max-ratio, peak] x [key, abs max, median]
``tok_rec_i``          int64[2, 3]            records [max-ratio, peak] x [sample, position, channel]
``topk_abs/value``     float32[cap]           pending top-k candidates (abs -1 = empty slot; cap = 32 K)
``topk_index``         int64[cap, 3]          their sample, position, channel
=====================  =====================  ===============================================

The key of the max-ratio record is the ratio, that of the peak record the token's max |x|; an empty
record has key -1. Records and top-k entries are ordered by (key desc, sample asc, position asc,
channel asc), so that any chunking of the updates followed by :func:`merge_states` is bit-identical to
a single pass. Per-update scratch (row maxima, medians...) is cached here too, sized by capacity so a
scan with varying row counts does not allocate on every update.

On a GPU the kernels that follow an update's fused pass (top-k; token medians, criterion and records) run
on side streams, beside whatever the current stream does next, and nothing waits for them until the
state is read: :meth:`StatsState.settle` makes the current stream wait (no host sync), and every reader
(``summary``, ``state_dict``, merges, ``reset``...) calls it. What the fused pass hands to the side
kernels (the row maxima, and x itself) is kept allocated for them by the caching allocator
(``record_stream``), so an update's fused pass waits for no side work; only every ``SIDE_LAG``-th update
the current stream waits for the side work of the update ``SIDE_LAG`` before, which bounds how far the
side streams, and the inputs they keep alive, fall behind.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

from .hist_math import HIST_BINS

# counts
NON_NAN, NAN, POSINF, NEGINF = 0, 1, 2, 3
# sums
SUM, SUM_SQ, ABS_SUM = 0, 1, 2
# token records
REC_RATIO, REC_PEAK = 0, 1
# tok_counts
N_TOKENS, N_PASS = 0, 1

INT64_MAX = torch.iinfo(torch.int64).max
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)
# Compact the top-k pending buffer after this many updates' candidates have been appended.
TOPK_PENDING_UPDATES = 32
# Every this-many-th GPU update, the current stream waits for the side work of the update this many before
# (StatsState.begin_side_work). A wait between two fused passes costs more than itself: the second pass can no
# longer launch early (programmatic dependent launch), so waits are rare, not one per update.
SIDE_LAG = int(os.environ.get("MAXACT_SIDE_LAG", 8))

TOKEN_MEDIAN_MODES = ("all", "candidates")


@dataclass(frozen=True)
class StatsConfig:
    """What one :class:`ActivationStats` tracks (fixed at construction)."""

    num_channels: int
    track_tokens: bool = False
    track_channels: bool = False
    topk: int = 0
    num_samples: int = 0
    sun_abs_threshold: float = 100.0
    sun_ratio_threshold: float = 1000.0
    token_median: str = "all"

    def __post_init__(self) -> None:
        if self.num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {self.num_channels}")
        if self.topk < 0 or self.num_samples < 0:
            raise ValueError("topk and num_samples must be >= 0")
        if self.topk * self.num_channels >= 2**32:
            raise ValueError("topk * num_channels must be < 2**32 (top-k element keys hold a 32-bit index)")
        if self.token_median not in TOKEN_MEDIAN_MODES:
            raise ValueError(f"token_median must be one of {TOKEN_MEDIAN_MODES}, got {self.token_median!r}")

    def as_tensor(self) -> torch.Tensor:
        """float64 vector saved in state dicts, checked on load."""
        values = [
            self.num_channels,
            float(self.track_tokens),
            float(self.track_channels),
            self.topk,
            self.num_samples,
            self.sun_abs_threshold,
            self.sun_ratio_threshold,
            float(TOKEN_MEDIAN_MODES.index(self.token_median)),
        ]
        return torch.tensor(values, dtype=torch.float64)

    def as_dict(self) -> dict:
        return asdict(self)


class StatsState:
    """The device tensors of one site's statistics (see the module docstring for the layout)."""

    def __init__(self, config: StatsConfig, device: torch.device) -> None:
        self.config = config
        self.device = torch.device(device)
        dev = self.device
        self.counts = torch.zeros(4, dtype=torch.int64, device=dev)
        self.sums = torch.zeros(3, dtype=torch.float64, device=dev)
        self.minmax = torch.zeros(2, dtype=torch.float32, device=dev)
        self.abs_hist = torch.zeros(HIST_BINS, dtype=torch.int64, device=dev)
        if config.track_channels:
            self.channel_abs_max = torch.zeros(config.num_channels, dtype=torch.float32, device=dev)
        if config.num_samples:
            self.sample_abs_max = torch.zeros(config.num_samples, dtype=torch.float32, device=dev)
            self.sample_oor = torch.zeros(1, dtype=torch.int64, device=dev)
        if config.track_tokens:
            self.tok_counts = torch.zeros(2, dtype=torch.int64, device=dev)
            self.ratio_sums = torch.zeros(2, dtype=torch.float64, device=dev)
            self.tok_rec_f = torch.zeros(2, 3, dtype=torch.float64, device=dev)
            self.tok_rec_i = torch.zeros(2, 3, dtype=torch.int64, device=dev)
            # Thresholds as float64 on the device: the kernels compare in float64, as the reference does.
            self.sun_params = torch.tensor(
                [config.sun_abs_threshold, config.sun_ratio_threshold], dtype=torch.float64, device=dev
            )
        if config.topk:
            cap = config.topk * TOPK_PENDING_UPDATES
            self.topk_abs = torch.zeros(cap, dtype=torch.float32, device=dev)
            self.topk_value = torch.zeros(cap, dtype=torch.float32, device=dev)
            self.topk_index = torch.zeros(cap, 3, dtype=torch.int64, device=dev)
        self.topk_fill = 0  # host-side count of used pending slots: appending needs no sync
        # backend's device compaction (the Triton kernel), or None for the torch sorts below
        self.topk_compactor = None
        self._scratch: dict[str, torch.Tensor] = {}
        # side-stream work: update count, per slot the events marking its side work done, the latest ones
        self._updates = 0
        self._slot_events: list[tuple] = [() for _ in range(SIDE_LAG)]
        self._pending: tuple = ()
        # the stream the state tensors were allocated on: when the state goes, it waits for the side work
        # still writing them, before the allocator hands their memory to anything else
        self._home_stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        self.reset()

    def __del__(self) -> None:
        try:
            if self._home_stream is not None:
                _wait_for(self._home_stream, self._pending)
        except Exception:  # interpreter shutdown, CUDA already torn down
            pass

    # ------------------------------------------------------------------ state proper
    def persistent_names(self) -> list[str]:
        """Names of the tensors that make up the statistics (what state_dict saves)."""
        cfg = self.config
        names = ["counts", "sums", "minmax", "abs_hist"]
        if cfg.track_channels:
            names.append("channel_abs_max")
        if cfg.num_samples:
            names += ["sample_abs_max", "sample_oor"]
        if cfg.track_tokens:
            names += ["tok_counts", "ratio_sums", "tok_rec_f", "tok_rec_i"]
        if cfg.topk:
            names += ["topk_abs", "topk_value", "topk_index"]
        return names

    def reset(self) -> None:
        """Back to the empty state (in place: tensors keep their identity)."""
        self.settle()
        self.counts.zero_()
        self.sums.zero_()
        self.minmax[0] = float("inf")
        self.minmax[1] = float("-inf")
        self.abs_hist.zero_()
        cfg = self.config
        if cfg.track_channels:
            self.channel_abs_max.zero_()
        if cfg.num_samples:
            self.sample_abs_max.zero_()
            self.sample_oor.zero_()
        if cfg.track_tokens:
            self.tok_counts.zero_()
            self.ratio_sums.zero_()
            self.tok_rec_f.fill_(-1.0)
            self.tok_rec_i.fill_(INT64_MAX)
        if cfg.topk:
            self.topk_abs.fill_(-1.0)
            self.topk_value.zero_()
            self.topk_index.fill_(INT64_MAX)
        self.topk_fill = 0

    # ------------------------------------------------------------------ top-k pending buffer
    def topk_reserve(self, n: int) -> int:
        """First of ``n`` free pending slots (compacting first when the buffer is full)."""
        cap = self.topk_abs.numel()
        if n > cap - self.config.topk:
            raise ValueError(f"cannot append {n} top-k candidates at once (at most {cap - self.config.topk})")
        if self.topk_fill + n > cap:
            self.topk_compact()
        start = self.topk_fill
        self.topk_fill += n
        return start

    def topk_compact(self) -> None:
        """Sort the pending candidates by the total order and keep the first K (device ops only)."""
        if self.topk_compactor is not None:
            self.topk_compactor(self)
            return
        k = self.config.topk
        abs_, value, index = topk_select(self.topk_abs[: self.topk_fill], self.topk_value[: self.topk_fill],
                                         self.topk_index[: self.topk_fill], k)
        m = abs_.numel()
        self.topk_abs[:m] = abs_
        self.topk_value[:m] = value
        self.topk_index[:m] = index
        self.topk_abs[m:].fill_(-1.0)
        self.topk_value[m:].zero_()
        self.topk_index[m:].fill_(INT64_MAX)
        self.topk_fill = k

    # ------------------------------------------------------------------ side-stream work
    def begin_side_work(self) -> int:
        """The slot (0 .. SIDE_LAG - 1) of a GPU update whose later kernels run on side streams; at slot 0 the
        current stream first waits for the side work of the update ``SIDE_LAG`` before."""
        slot = self._updates % SIDE_LAG
        self._updates += 1
        if slot == 0 and self._slot_events[slot]:
            _wait_for(torch.cuda.current_stream(self.device), self._slot_events[slot])
        return slot

    def side_events(self, slot: int, n: int) -> tuple:
        """``n`` events of ``slot`` to mark the end of its side work (made once, recorded by each update)."""
        events = self._slot_events[slot]
        if len(events) != n:
            events = tuple(torch.cuda.Event() for _ in range(n))
        return events

    def end_side_work(self, slot: int, events: tuple) -> None:
        """Record that ``slot``'s side work ends at ``events`` (just recorded on the side streams)."""
        self._slot_events[slot] = events
        self._pending = events

    def settle(self) -> None:
        """Make torch's current stream wait for this state's side-stream work queued so far (no host sync).

        Needed before reading or writing the state tensors outside :meth:`ActivationStats.update`; the
        readers of :class:`~maxact_kernels.ActivationStats` call it themselves."""
        if self._pending:
            _wait_for(torch.cuda.current_stream(self.device), self._pending)

    # ------------------------------------------------------------------ scratch
    def scratch(self, name: str, numel: int, dtype: torch.dtype, fill: float | int | None = None) -> torch.Tensor:
        """A reusable 1-D buffer of at least ``numel`` elements (first ``numel`` returned).

        It grows geometrically, so varying row counts allocate O(log) times; ``fill`` initialises a new
        buffer (kernels that need a fill value keep it restored after use). Before a buffer is replaced the
        current stream waits for the side work that may still read it (see :meth:`settle`).
        """
        buf = self._scratch.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            if buf is not None:
                self.settle()
            size = max(numel, 2 * (buf.numel() if buf is not None else 0), 64)
            buf = torch.empty(size, dtype=dtype, device=self.device)
            if fill is not None:
                buf.fill_(fill)
            self._scratch[name] = buf
        return buf[:numel]

    def arange(self, n: int) -> torch.Tensor:
        """int64 [0, n) on the device, cached (default positions)."""
        buf = self._scratch.get("arange")
        if buf is None or buf.numel() < n:
            if buf is not None:
                self.settle()
            buf = torch.arange(max(n, 64, 2 * (buf.numel() if buf is not None else 0)), dtype=torch.int64,
                               device=self.device)
            self._scratch["arange"] = buf
        return buf[:n]


# ---------------------------------------------------------------------- orders and merges
def _wait_for(stream: torch.cuda.Stream, events: tuple) -> None:
    """Make ``stream`` wait (on the device, no host sync) for every event of ``events``."""
    for event in events:
        stream.wait_event(event)


def topk_order(abs_: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Permutation sorting entries by (abs desc, sample asc, position asc, channel asc); empty (abs < 0) last.

    Built from stable sorts, least significant key first; no host sync.
    """
    perm = torch.arange(abs_.numel(), device=abs_.device)
    for key in (index[:, 2], index[:, 1], index[:, 0], -abs_):
        order = torch.sort(key[perm], stable=True).indices
        perm = perm[order]
    return perm


def topk_select(abs_: torch.Tensor, value: torch.Tensor, index: torch.Tensor, k: int):
    """The first ``k`` entries under :func:`topk_order` (fewer if fewer are given)."""
    perm = topk_order(abs_, index)[:k]
    return abs_[perm], value[perm], index[perm]


def record_better(key_a, sample_a, pos_a, key_b, sample_b, pos_b) -> torch.Tensor:
    """Boolean tensor: record a strictly precedes record b under (key desc, sample asc, position asc)."""
    return (key_a > key_b) | (
        (key_a == key_b) & ((sample_a < sample_b) | ((sample_a == sample_b) & (pos_a < pos_b)))
    )


def merge_records(dst_f: torch.Tensor, dst_i: torch.Tensor, src_f: torch.Tensor, src_i: torch.Tensor) -> None:
    """In place: each record of ``dst`` becomes the better of ``dst`` and ``src`` (ties keep ``dst``)."""
    better = record_better(src_f[:, 0], src_i[:, 0], src_i[:, 1], dst_f[:, 0], dst_i[:, 0], dst_i[:, 1])
    dst_f.copy_(torch.where(better[:, None], src_f, dst_f))
    dst_i.copy_(torch.where(better[:, None], src_i, dst_i))


def merge_states(dst: StatsState, src: StatsState) -> None:
    """Fold ``src`` into ``dst`` exactly (same config; ``src`` may live on another device)."""
    if dst.config != src.config:
        raise ValueError(f"cannot merge states of different configs: {dst.config} vs {src.config}")
    dst.settle()
    src.settle()
    dev = dst.device

    def other(name: str) -> torch.Tensor:
        return getattr(src, name).to(dev)

    dst.counts += other("counts")
    dst.sums += other("sums")
    mm = other("minmax")
    dst.minmax[0] = torch.minimum(dst.minmax[0], mm[0])
    dst.minmax[1] = torch.maximum(dst.minmax[1], mm[1])
    dst.abs_hist += other("abs_hist")
    cfg = dst.config
    if cfg.track_channels:
        torch.maximum(dst.channel_abs_max, other("channel_abs_max"), out=dst.channel_abs_max)
    if cfg.num_samples:
        torch.maximum(dst.sample_abs_max, other("sample_abs_max"), out=dst.sample_abs_max)
        dst.sample_oor += other("sample_oor")
    if cfg.track_tokens:
        dst.tok_counts += other("tok_counts")
        dst.ratio_sums += other("ratio_sums")
        merge_records(dst.tok_rec_f, dst.tok_rec_i, other("tok_rec_f"), other("tok_rec_i"))
    if cfg.topk:
        dst.topk_compact()
        src.topk_compact()
        k = cfg.topk
        abs_, value, index = topk_select(
            torch.cat([dst.topk_abs[:k], other("topk_abs")[:k]]),
            torch.cat([dst.topk_value[:k], other("topk_value")[:k]]),
            torch.cat([dst.topk_index[:k], other("topk_index")[:k]]),
            k,
        )
        dst.topk_abs[:k] = abs_
        dst.topk_value[:k] = value
        dst.topk_index[:k] = index
        dst.topk_fill = k
