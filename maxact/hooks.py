"""Route captured activations to their sites' statistics.

A hook does as little as possible inside the forward pass: pick the tensor (first element of a tuple
output, the router's logits, the gate half of a fused gate_up projection, a module's first input),
view it as ``[rows, channels]`` and call ``states[site].update(x, mask=, sample_ids=, positions=)``
with the batch's row mask, sample ids and positions from :class:`BatchContext`. No host sync, no
boolean indexing, no loop over rows: ``update`` (``maxact_kernels``) does the work on the device.

Rows and locations: a captured tensor whose row count equals the batch's ``B * T`` gets the batch's
mask, sample ids and positions. A tensor with a different row count (the inputs of an
``nn.ModuleList`` expert, which sees only its routed tokens) is passed with ``mask``, ``sample_ids`` and
``positions`` None: its values are all counted, but which sample and position they came from is
unavailable (padding rows never reach an expert only if the model masks them; HF MoE models route
padding too, so such sites include padding tokens). Fused-expert sites (``SiteSpec.expert``) avoid
both problems: they read the experts module's full ``[tokens, hidden]`` input and mask out rows not
routed to their expert, so locations are exact and padding is excluded. Building those masks
allocates one ``[num_experts, tokens]`` bool tensor per MoE layer call.

Hooks are global state on the modules: :func:`attach` is a context manager that always removes them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from maxact.sites import SiteSpec

__all__ = [
    "BatchContext",
    "HookHandle",
    "StatsLike",
    "attach",
    "make_states",
    "site_devices",
    "run_forward",
    "bare_forward",
]

logger = logging.getLogger(__name__)


class StatsLike(Protocol):
    """What a hook needs from a site's state (``maxact_kernels.ActivationStats`` provides it)."""

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None, sample_ids: torch.Tensor | None = None,
               positions: torch.Tensor | None = None) -> None: ...


@dataclass
class BatchContext:
    """Per-batch row metadata the hooks pass on; the scanner fills it before each forward.

    ``row_mask`` (bool), ``row_sample_ids`` and ``row_positions`` (int64) are ``[B * T]`` device tensors
    in the row order of ``x.reshape(-1, C)`` for a ``[B, T, C]`` activation. Copies on other devices
    (a model spread by a device map) are made once per batch, on first use.
    """

    row_mask: torch.Tensor | None = None
    row_sample_ids: torch.Tensor | None = None
    row_positions: torch.Tensor | None = None
    _copies: dict = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> int:
        """Number of rows of the current batch (-1 when unset); read from shapes, never synced."""
        return -1 if self.row_mask is None else int(self.row_mask.shape[0])

    def set(self, row_mask: torch.Tensor, row_sample_ids: torch.Tensor, row_positions: torch.Tensor) -> None:
        """Install the current batch's row tensors (all ``[rows]``, same device)."""
        rows = row_mask.shape[0]
        if row_sample_ids.shape[0] != rows or row_positions.shape[0] != rows:
            raise ValueError("row_mask, row_sample_ids and row_positions must have the same length")
        self.row_mask, self.row_sample_ids, self.row_positions = row_mask, row_sample_ids, row_positions
        self._copies = {row_mask.device: (row_mask, row_sample_ids, row_positions)}

    def set_batch(self, batch: Any, device: torch.device | str) -> None:
        """Fill from a :class:`maxact.batching.Batch` (its ``row_*()`` methods), moved to ``device``."""
        device = torch.device(device)
        self.set(*(t.to(device, non_blocking=True) for t in
                   (batch.row_mask(), batch.row_sample_ids(), batch.row_positions())))

    def clear(self) -> None:
        self.row_mask = self.row_sample_ids = self.row_positions = None
        self._copies = {}

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mask, sample_ids, positions) on ``device``."""
        found = self._copies.get(device)
        if found is None:
            if self.row_mask is None:
                raise RuntimeError("BatchContext is empty: call set()/set_batch() before the forward pass")
            found = tuple(t.to(device, non_blocking=True) for t in
                          (self.row_mask, self.row_sample_ids, self.row_positions))
            self._copies[device] = found
        return found


@dataclass
class HookHandle:
    """What :func:`attach` yields: call counts per site and MoE routing counts.

    Attributes:
        calls: site name -> number of tensors delivered to its state (plain ints; for hook-coverage
            checks: a site still at 0 after a scan never fired).
        expert_counts: router site name -> int64 device tensor ``[num_experts + 1]``: tokens of real
            rows (padding excluded) routed to each expert, from the router's own top-k indices; the
            last slot counts indices outside ``[0, num_experts)``. Only routers whose output includes
            their indices are counted (all MoE models of transformers, BailingMoe).
    """

    calls: dict[str, int]
    expert_counts: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def expert_tokens(self) -> dict[str, torch.Tensor]:
        """Router site name -> ``[num_experts]`` routed-token counts (device tensors, views)."""
        return {name: counts[:-1] for name, counts in self.expert_counts.items()}

    def missing(self) -> list[str]:
        """Sites whose hook never delivered a tensor."""
        return [name for name, count in self.calls.items() if count == 0]


# ---------------------------------------------------------------------------------------------
# picking tensors


def _flat_tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _flat_tensors(item)
    elif hasattr(value, "to_tuple"):  # transformers ModelOutput
        yield from _flat_tensors(value.to_tuple())


def _first_tensor(value: Any) -> torch.Tensor | None:
    return next(_flat_tensors(value), None)


def _router_logits(output: Any, num_experts: int) -> torch.Tensor | None:
    # Qwen/gpt-oss routers return (logits, scores, indices), BailingMoe (indices, weights, logits):
    # the logits are the floating tensor whose last dimension is the number of experts.
    for tensor in _flat_tensors(output):
        if tensor.is_floating_point() and tensor.shape[-1] == num_experts:
            return tensor
    return None


def _router_indices(output: Any, rows: int) -> torch.Tensor | None:
    for tensor in _flat_tensors(output):
        if not tensor.is_floating_point() and tensor.dim() >= 2 and tensor.numel() // tensor.shape[-1] == rows:
            return tensor
    return None


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    return _first_tensor(list(args) + list(kwargs.values()))


def _routing_indices(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The ``[tokens, top_k]`` expert indices an experts module receives next to its input."""
    for value in list(args[1:]) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dtype != torch.bool:
            return value
    return None


# ---------------------------------------------------------------------------------------------
# routes: one site fed by one hook


class _Route:
    __slots__ = ("site", "state", "device", "calls")

    def __init__(self, site: SiteSpec, state: StatsLike, device: torch.device, calls: dict[str, int]):
        self.site, self.state, self.device, self.calls = site, state, device, calls

    def deliver(self, tensor: torch.Tensor, ctx: BatchContext, row_mask: torch.Tensor | None = None) -> None:
        """View ``tensor`` as [rows, C] and update the state; ``row_mask`` replaces the batch mask."""
        site = self.site
        channels = site.num_channels
        if site.part == "gate_half":
            tensor = tensor[..., :channels]
        if tensor.shape[-1] != channels:
            raise RuntimeError(
                f"site {site.name} ({site.module_name}): expected last dimension {channels}, got shape "
                f"{tuple(tensor.shape)}"
            )
        if ctx.row_mask is None:
            raise RuntimeError("BatchContext is empty: call set()/set_batch() before the forward pass")
        x = tensor.reshape(-1, channels)
        if x.device != self.device:  # a device map moved the tensor; the state lives with its module
            x = x.to(self.device, non_blocking=True)
        if x.shape[0] == ctx.rows:
            mask, sample_ids, positions = ctx.on(x.device)
            if row_mask is not None:
                mask = row_mask
            self.state.update(x, mask=mask, sample_ids=sample_ids, positions=positions)
        else:
            self.state.update(x, mask=row_mask, sample_ids=None, positions=None)
        self.calls[site.name] += 1


def _count_experts(counts: torch.Tensor, indices: torch.Tensor, ctx: BatchContext) -> None:
    """Add the real tokens routed to each expert to ``counts`` ([num_experts + 1]; last = out of range)."""
    num_experts = counts.shape[0] - 1
    flat = indices.reshape(-1, indices.shape[-1])
    top_k = flat.shape[-1]
    idx = flat.to(counts.device, non_blocking=True).long()
    idx = torch.where((idx >= 0) & (idx < num_experts), idx, num_experts).reshape(-1)
    if flat.shape[0] == ctx.rows:
        weight = ctx.on(counts.device)[0][:, None].expand(-1, top_k).reshape(-1).long()
    else:
        weight = torch.ones_like(idx)
    counts.index_add_(0, idx, weight)


def _expert_masks(indices: torch.Tensor, num_experts: int, ctx: BatchContext) -> torch.Tensor:
    """[num_experts, tokens] bool: token routed to the expert (and a real token when rows match)."""
    idx = indices.reshape(-1, indices.shape[-1]).long()
    tokens = idx.shape[0]
    idx = torch.where((idx >= 0) & (idx < num_experts), idx, num_experts)
    hit = torch.zeros((tokens, num_experts + 1), dtype=torch.bool, device=idx.device)
    hit.scatter_(1, idx, True)
    masks = hit[:, :num_experts].t().contiguous()
    if tokens == ctx.rows:
        masks &= ctx.on(masks.device)[0]
    return masks


def _output_hook(routes: list[_Route], ctx: BatchContext, counts: dict[str, torch.Tensor]):
    def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
        first = None
        for route in routes:
            site = route.site
            if site.component == "router":
                tensor = _router_logits(output, site.num_channels)
                if tensor is not None and site.name in counts:
                    indices = _router_indices(output, tensor.numel() // tensor.shape[-1])
                    if indices is not None:
                        _count_experts(counts[site.name], indices, ctx)
            else:
                first = _first_tensor(output) if first is None else first
                tensor = first
            if tensor is not None:
                route.deliver(tensor, ctx)
    return hook


def _input_hook(routes: list[_Route], ctx: BatchContext):
    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        tensor = _first_input(args, kwargs)
        if tensor is None:
            return None
        masks = None
        for route in routes:
            expert = route.site.expert
            if expert is None:
                route.deliver(tensor, ctx)
                continue
            if masks is None:
                indices = _routing_indices(args, kwargs)
                if indices is None:
                    return None
                num_experts = 1 + max(r.site.expert for r in routes if r.site.expert is not None)
                masks = _expert_masks(indices.to(route.device, non_blocking=True), num_experts, ctx)
            route.deliver(tensor, ctx, row_mask=masks[expert])
        return None
    return hook


# ---------------------------------------------------------------------------------------------


def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in module.parameters(recurse=False):
        return tensor.device
    for tensor in module.buffers(recurse=False):
        return tensor.device
    for tensor in module.parameters():
        return tensor.device
    return None


def site_devices(model: nn.Module, sites: Sequence[SiteSpec]) -> dict[str, torch.device]:
    """Site name -> the device of its module's weights (nearest ancestor with weights if it has none)."""
    fallback = _module_device(model) or torch.device("cpu")
    devices = {}
    for site in sites:
        path, device = site.module_name, None
        while device is None:
            device = _module_device(model.get_submodule(path)) if path else fallback
            path = path.rpartition(".")[0]
        devices[site.name] = device
    return devices


@contextmanager
def attach(model: nn.Module, sites: Sequence[SiteSpec], states: Mapping[str, StatsLike], ctx: BatchContext,
           *, count_experts: bool = True) -> Iterator[HookHandle]:
    """Register the hooks feeding ``states`` for ``sites`` on ``model``; always removes them on exit.

    One hook is registered per (module, capture); it feeds every site on that module. Yields a
    :class:`HookHandle` whose ``calls`` counts deliveries per site and whose ``expert_tokens`` counts
    routed tokens per expert for each router site (when ``count_experts``).
    """
    missing = [site.name for site in sites if site.name not in states]
    if missing:
        raise KeyError(f"no state for site(s): {', '.join(missing[:8])}")
    devices = site_devices(model, sites)
    calls = {site.name: 0 for site in sites}
    handle = HookHandle(calls=calls)
    groups: dict[tuple[str, str], list[_Route]] = defaultdict(list)
    for site in sites:
        device = getattr(states[site.name], "device", None)
        device = torch.device(device) if device is not None else devices[site.name]
        groups[(site.module_name, site.capture)].append(_Route(site, states[site.name], device, calls))
        if count_experts and site.component == "router":
            handle.expert_counts[site.name] = torch.zeros(site.num_channels + 1, dtype=torch.int64, device=device)
    registered = []
    try:
        for (module_name, capture), routes in groups.items():
            module = model.get_submodule(module_name)
            if capture == "output":
                registered.append(module.register_forward_hook(_output_hook(routes, ctx, handle.expert_counts)))
            else:
                registered.append(module.register_forward_pre_hook(_input_hook(routes, ctx), with_kwargs=True))
        yield handle
    finally:
        for hook_handle in registered:
            hook_handle.remove()


def make_states(sites: Sequence[SiteSpec], *, device: torch.device | str | Mapping[str, Any] | None = None,
                model: nn.Module | None = None, backend: str = "auto", num_samples: int = 0, topk: int = 0,
                track_channels: bool = True, sun_abs_threshold: float = 100.0,
                sun_ratio_threshold: float = 1000.0, **options: Any) -> dict[str, Any]:
    """One ``maxact_kernels.ActivationStats`` per site.

    Args:
        sites: the sites to create states for.
        device: one device for all, or a mapping site name -> device. When None, ``model`` must be
            given and each state goes on the device of its site's module (a device map spreads them).
        model: used to place states when ``device`` is None.
        backend, num_samples, topk, track_channels, sun_abs_threshold, sun_ratio_threshold, options:
            passed to ``ActivationStats`` (options e.g. ``token_median``); ``track_tokens`` comes from
            each site (residual-type sites).
    """
    from maxact_kernels import ActivationStats

    if device is None:
        if model is None:
            raise ValueError("make_states needs device= or model=")
        device = site_devices(model, sites)
    states = {}
    for site in sites:
        site_device = device[site.name] if isinstance(device, Mapping) else device
        states[site.name] = ActivationStats(
            site.num_channels,
            device=site_device,
            backend=backend,
            track_tokens=site.track_tokens,
            track_channels=track_channels,
            topk=topk,
            num_samples=num_samples,
            sun_abs_threshold=sun_abs_threshold,
            sun_ratio_threshold=sun_ratio_threshold,
            **options,
        )
    return states


def _batch_tensors(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, Mapping):
        return batch["input_ids"], batch.get("attention_mask")
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch.input_ids, getattr(batch, "attention_mask", None)


def run_forward(model: nn.Module, batch: Any) -> None:
    """One forward of the base model on a batch, the same call with or without hooks.

    ``batch`` is a :class:`maxact.batching.Batch`, a mapping with ``input_ids`` / ``attention_mask``, or
    a tuple ``(input_ids, attention_mask)``. Tensors are moved to the embedding's device when needed.
    Runs under ``torch.inference_mode()`` with ``use_cache=False`` and ``output_hidden_states=False`` and
    returns nothing, so benchmarks of bare and hooked forwards time the same work.
    """
    input_ids, attention_mask = _batch_tensors(batch)
    device = model.get_input_embeddings().weight.device
    if input_ids.device != device:
        input_ids = input_ids.to(device, non_blocking=True)
    if attention_mask is not None and attention_mask.device != device:
        attention_mask = attention_mask.to(device, non_blocking=True)
    with torch.inference_mode():
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=False)


bare_forward = run_forward
