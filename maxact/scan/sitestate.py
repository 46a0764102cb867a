"""Per-site statistics states as the scan loop owns them.

Each hooked site gets a ``SiteState``: what the hook layer calls ``update`` on. It forwards the tensor
to the site's ``ActivationStats`` and, on M-eligible sites, keeps position 0 in a second tiny state
(one row per sample), which makes "M with and without position 0" exact at the cost of a few
extra small launches per batch:

* ``main``  sees the kept rows with position >= max(1, skip_first_tokens);
* ``first`` sees the position-0 row of every sample (gathered by index: B rows, not B*T).

The site's reported statistics are ``merge(main, first)`` when nothing is skipped (merging is
exact, so this equals one state that saw every row), and ``main`` alone under ``--skip-first-tokens``.
Sites outside M use one state fed with the hook's mask (kept rows) directly.
``calls`` counts delivered tensors, which is the hook-coverage check (a site that never fired).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

FIRST_SUFFIX = "#pos0"


@dataclass
class BatchGeometry:
    """Device tensors describing the batch in flight, set by the loop before each forward.

    rest_mask: bool[rows], kept rows whose position >= 1 (the main state's mask on M sites).
    first_index: int64[n0], flat row index of each sample's position-0 row (n0 = samples in batch,
        0 when the first tokens are not measured).
    first_sample_ids / first_positions: int64[n0] for those rows.
    Per-device copies are made lazily for models spread over several GPUs (device_map).
    """

    rest_mask: torch.Tensor | None = None
    first_index: torch.Tensor | None = None
    first_sample_ids: torch.Tensor | None = None
    first_positions: torch.Tensor | None = None
    rows: int = 0
    _per_device: dict[Any, tuple] = field(default_factory=dict)

    def set(self, rest_mask: torch.Tensor, first_index: torch.Tensor, first_sample_ids: torch.Tensor,
            first_positions: torch.Tensor) -> None:
        self.rest_mask, self.first_index = rest_mask, first_index
        self.first_sample_ids, self.first_positions = first_sample_ids, first_positions
        self.rows = int(rest_mask.shape[0])
        self._per_device = {rest_mask.device: (rest_mask, first_index, first_sample_ids, first_positions)}

    def on(self, device: torch.device) -> tuple:
        """(rest_mask, first_index, first_sample_ids, first_positions) on ``device`` (async copy)."""
        hit = self._per_device.get(device)
        if hit is None:
            base = self._per_device[self.rest_mask.device]
            hit = tuple(t.to(device, non_blocking=True) for t in base)
            self._per_device[device] = hit
        return hit


def stats_kwargs(config: Any, spec: Any, num_samples: int) -> dict[str, Any]:
    """ActivationStats keyword arguments for one site under a ScanConfig."""
    from maxact_kernels import ActivationStats

    kwargs: dict[str, Any] = dict(
        backend=config.backend,
        track_tokens=bool(spec.track_tokens and config.track_tokens),
        track_channels=bool(config.track_channels),
        topk=int(config.topk),
        num_samples=int(num_samples),
        sun_abs_threshold=float(config.sun_t_val),
        sun_ratio_threshold=float(config.sun_t_ratio),
    )
    # Optional kernel feature (DESIGN.md: median only for candidate tokens, same n_pass).
    params = inspect.signature(ActivationStats.__init__).parameters
    if "token_median" in params:
        kwargs["token_median"] = config.token_median
    elif config.token_median != "all":
        log.warning("--token-median %s: the installed maxact_kernels has no such option; "
                    "computing the median for all tokens", config.token_median)
    return kwargs


class SiteState:
    """The object the hook layer updates for one site (duck-types ``ActivationStats.update``).

    Position-0 rows are not folded into ``first`` batch by batch: each update only copies them
    (one ``index_select`` into a staging buffer, plus their sample ids) and ``flush()`` folds the
    staged rows in one update, sorted by sample id (the order ties break in). The loop flushes
    before a batch that would overflow the buffer (``reserve``) and at the end of the plan, so the
    schedule depends on the batch sequence alone, and a resumed scan (whose checkpoint holds the
    staged rows) folds the same rows in the same updates as an uninterrupted one. Flushing happens
    only between batches, so the OOM guard can undo a failed batch by restoring ``fill`` (staged
    rows below it are never overwritten inside a batch).
    """

    def __init__(self, spec: Any, make: Callable[[], Any], split_first: bool, geometry: BatchGeometry,
                 first_capacity: int = 256):
        self.spec = spec
        self.name = spec.name
        self.make = make
        self.main = make()
        self.first = make() if split_first else None
        self.geometry = geometry
        self.calls = 0
        self.capacity = max(1, int(first_capacity))
        self.fill = 0                          # staged position-0 rows (host-side count)
        self._rows: torch.Tensor | None = None
        self._sids: torch.Tensor | None = None
        self._zeros: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        """Where the state lives (the hook layer moves tensors here under a device map)."""
        return self.main.device

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None,
               sample_ids: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> None:
        self.calls += 1
        if self.first is None:
            self.main.update(x, mask=mask, sample_ids=sample_ids, positions=positions)
            return
        rows = x.reshape(-1, x.shape[-1])
        g = self.geometry
        if rows.shape[0] != g.rows:
            # Not one row per token of the batch (an unusual module): no position split possible.
            self.main.update(x, mask=mask, sample_ids=sample_ids, positions=positions)
            return
        rest_mask, first_index, first_sids, _ = g.on(rows.device)
        self.main.update(rows, mask=rest_mask, sample_ids=sample_ids, positions=positions)
        n = int(first_index.shape[0])
        if n:
            self._stage(rows, first_index, first_sids, n)

    def _stage(self, rows: torch.Tensor, index: torch.Tensor, sids: torch.Tensor, n: int) -> None:
        if self._rows is None or self._rows.dtype != rows.dtype or self._rows.device != rows.device:
            self.flush()
            cap = max(self.capacity, n)
            self._rows = torch.empty((cap, rows.shape[1]), dtype=rows.dtype, device=rows.device)
            self._sids = torch.empty(cap, dtype=torch.int64, device=rows.device)
            self._zeros = torch.zeros(cap, dtype=torch.int64, device=rows.device)
        if self.fill + n > self._rows.shape[0]:
            # Only when one batch delivers more than reserve() planned for (a module called twice).
            self.flush()
        end = self.fill + n
        torch.index_select(rows, 0, index, out=self._rows[self.fill:end])
        self._sids[self.fill:end].copy_(sids)
        self.fill = end

    def reserve(self, rows: int) -> None:
        """Called between batches: make room for ``rows`` more staged rows (flushing if needed)."""
        if self.first is not None and self._rows is not None and self.fill + rows > self._rows.shape[0]:
            self.flush()

    def flush(self) -> None:
        """Fold the staged position-0 rows into ``first`` (rows sorted by sample id)."""
        if self.first is None or self.fill == 0:
            return
        n, self.fill = self.fill, 0
        sids = self._sids[:n]
        order = torch.argsort(sids, stable=True)
        self.first.update(self._rows[:n].index_select(0, order), mask=None,
                          sample_ids=sids.index_select(0, order), positions=self._zeros[:n])

    def staged_abs_max(self) -> torch.Tensor | None:
        """0-d device tensor: max |x| of the staged rows (None when nothing is staged); no sync."""
        if self.first is None or self.fill == 0:
            return None
        return self._rows[:self.fill].abs().amax().float()

    def staged(self) -> dict[str, torch.Tensor] | None:
        """The staged position-0 rows and their sample ids (for a checkpoint), or None."""
        if self.first is None or self.fill == 0:
            return None
        return {"rows": self._rows[:self.fill].clone(), "sample_ids": self._sids[:self.fill].clone()}

    def load_staged(self, staged: dict[str, torch.Tensor]) -> None:
        """Put checkpointed staged rows back, so the resumed scan folds them exactly as an
        uninterrupted one would (same rows in the same updates: bit-identical sums)."""
        rows = staged["rows"].to(self.device)
        n = int(rows.shape[0])
        cap = max(self.capacity, n)
        self._rows = torch.empty((cap, rows.shape[1]), dtype=rows.dtype, device=self.device)
        self._sids = torch.empty(cap, dtype=torch.int64, device=self.device)
        self._zeros = torch.zeros(cap, dtype=torch.int64, device=self.device)
        self._rows[:n].copy_(rows)
        self._sids[:n].copy_(staged["sample_ids"].to(self.device))
        self.fill = n

    def named_states(self) -> dict[str, Any]:
        """Every ActivationStats of this site under its checkpoint name."""
        out = {self.name: self.main}
        if self.first is not None:
            out[self.name + FIRST_SUFFIX] = self.first
        return out

    def live(self) -> tuple[list[torch.Tensor], list[tuple[Any, tuple[str, ...]]]]:
        """Live state tensors and (object, host-side attributes) pairs for the OOM guard's snapshot."""
        from maxact.scan.pipeline import live_state

        tensors, host = [], [(self, ("fill",))]
        for st in self.named_states().values():
            t, holder = live_state(st)
            tensors.extend(t)
            host.append((holder, ("topk_fill",)))
        return tensors, host


def device_of_module(model: torch.nn.Module, module_name: str, default: torch.device) -> torch.device:
    """Where a module's parameters live (its state lives there too under device_map)."""
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return default
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return default
