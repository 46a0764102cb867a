"""Hook-site names and specifications (docs/CONTRACTS.md section 2).

A *site* is one place in the model whose activations get their own ``ActivationStats``. Paper sites
carry the names of DESIGN.md (``embedding``, ``layers.3.hidden``, ``layers.3.attn``, ``layers.3.mlp``,
``layers.3.gate``, ``layers.3.router``, ``final_norm``); linear inputs are ``{module_name}.input`` and
regex-mode module outputs ``{module_name}.output``. One helper makes names (:func:`site_name`) and one
parses them (:func:`parse_site`) so no other module builds these strings by hand.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar, Union

__all__ = [
    "COMPONENTS",
    "LAYER_COMPONENTS",
    "PAPER_COMPONENTS",
    "RESIDUAL_COMPONENTS",
    "M_COMPONENTS",
    "SiteSpec",
    "site_name",
    "parse_site",
    "counts_for_m",
    "filter_sites",
]

COMPONENTS = (
    "embedding",
    "hidden",
    "attn",
    "mlp",
    "gate",
    "router",
    "final_norm",
    "linear_input",
    "module",
)
# Components whose names carry a layer index: ``layers.{i}.{component}``.
LAYER_COMPONENTS = ("hidden", "attn", "mlp", "gate", "router")
# The paper's six classes plus MoE router logits, in the order a forward pass meets them.
PAPER_COMPONENTS = ("embedding", "attn", "router", "gate", "mlp", "hidden", "final_norm")
# Residual-type sites: per-token statistics (Sun et al. criterion) are tracked on these.
RESIDUAL_COMPONENTS = frozenset({"embedding", "hidden", "attn", "mlp", "final_norm"})
# M (the global maximum) is taken over these only; gate, router, linear inputs and free modules
# are reported but excluded, as in the paper's code.
M_COMPONENTS = RESIDUAL_COMPONENTS

# Suffixes of module-derived names; paper names never end with them, so the two never collide.
_INPUT_SUFFIX = ".input"
_OUTPUT_SUFFIX = ".output"
_LAYER_NAME = re.compile(r"^layers\.(\d+)\.([a-z_]+)$")
# Layer index inside a dotted module path (``model.layers.3.mlp.up_proj``); best effort for names
# made from module paths, where discovery's SiteSpec.layer is the authority.
_LAYER_IN_PATH = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


@dataclass(frozen=True)
class SiteSpec:
    """Where and how one site is captured.

    Attributes:
        name: the site name (see :func:`site_name`).
        component: one of :data:`COMPONENTS`.
        layer: decoder-layer index, or None for model-level sites.
        module_name: dotted path (``model.get_submodule``) of the module the hook sits on, relative
            to the model that discovery was given.
        capture: ``"output"`` (forward hook) or ``"input"`` (forward pre-hook, first tensor argument).
        part: None, or ``"gate_half"``: the first half of the last dimension of a fused gate_up
            projection's output (the SwiGLU gate pre-activation).
        track_tokens: per-token statistics wanted (residual-type sites).
        num_channels: size of the last dimension of the captured tensor (after ``part``).
        expert: for a fused-experts module (3-D expert weights, no nn.Linear per expert): the expert
            whose routed tokens this site sees. The hook captures the experts module's input and
            masks out rows not routed to this expert, so locations stay exact. None elsewhere.
    """

    name: str
    component: str
    layer: int | None
    module_name: str
    capture: str
    part: str | None
    track_tokens: bool
    num_channels: int
    expert: int | None = None

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise ValueError(f"unknown component {self.component!r} for site {self.name!r}")
        if self.capture not in ("output", "input"):
            raise ValueError(f"capture must be 'output' or 'input', got {self.capture!r}")
        if self.part not in (None, "gate_half"):
            raise ValueError(f"part must be None or 'gate_half', got {self.part!r}")
        if self.num_channels <= 0:
            raise ValueError(f"site {self.name!r}: num_channels must be positive, got {self.num_channels}")


def site_name(component: str, layer: int | None = None, *, module: str | None = None) -> str:
    """Build the canonical name of a site.

    ``site_name("hidden", 3) == "layers.3.hidden"``; ``site_name("embedding") == "embedding"``;
    ``site_name("linear_input", module="layers.0.mlp.up_proj") == "layers.0.mlp.up_proj.input"``;
    ``site_name("module", module="layers.0.mlp") == "layers.0.mlp.output"``.
    """
    if component in ("embedding", "final_norm"):
        if layer is not None:
            raise ValueError(f"{component} is a model-level site and takes no layer")
        return component
    if component in LAYER_COMPONENTS:
        if layer is None or int(layer) < 0:
            raise ValueError(f"{component} sites need a non-negative layer index, got {layer!r}")
        return f"layers.{int(layer)}.{component}"
    if component in ("linear_input", "module"):
        if not module:
            raise ValueError(f"{component} sites are named after their module: pass module=...")
        return module + (_INPUT_SUFFIX if component == "linear_input" else _OUTPUT_SUFFIX)
    raise ValueError(f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}")


def parse_site(name: str) -> tuple[str, int | None]:
    """Split a site name into ``(component, layer)``; inverse of :func:`site_name`.

    For module-derived names (``*.input`` / ``*.output``) the layer is read from a ``layers.{i}``-like
    segment of the module path, or None when there is none.
    """
    if name in ("embedding", "final_norm"):
        return name, None
    match = _LAYER_NAME.match(name)
    if match and match.group(2) in LAYER_COMPONENTS:
        return match.group(2), int(match.group(1))
    for suffix, component in ((_INPUT_SUFFIX, "linear_input"), (_OUTPUT_SUFFIX, "module")):
        if name.endswith(suffix) and len(name) > len(suffix):
            layer = _LAYER_IN_PATH.search(name[: -len(suffix)])
            return component, (int(layer.group(1)) if layer else None)
    raise ValueError(
        f"not a site name: {name!r} (expected embedding, final_norm, layers.<i>.<component> with component "
        f"in {', '.join(LAYER_COMPONENTS)}, or <module>.input / <module>.output)"
    )


def counts_for_m(site: "SiteSpec | str") -> bool:
    """True when the site (a SiteSpec, a site name or a component) enters the global maximum M."""
    if isinstance(site, SiteSpec):
        component = site.component
    elif site in COMPONENTS:
        component = site
    else:
        component = parse_site(site)[0]
    return component in M_COMPONENTS


_Item = TypeVar("_Item", str, SiteSpec)
SiteFilter = Union[str, Sequence[str], Callable[[str], bool], None]


def _name_of(item: "str | SiteSpec") -> str:
    return item.name if isinstance(item, SiteSpec) else item


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def filter_sites(sites: Iterable[_Item], spec: SiteFilter) -> list[_Item]:
    """Keep the sites (names or SiteSpecs, order preserved) selected by ``spec``.

    ``spec`` is None (keep all), one name, one glob (``layers.*.hidden``), a list of names and/or
    globs, or a predicate called with the site name. An exact name that matches nothing, or a glob
    that matches nothing, raises ValueError naming it, so typos do not silently drop sites.
    """
    items = list(sites)
    if spec is None:
        return items
    if callable(spec):
        return [item for item in items if spec(_name_of(item))]
    patterns = [spec] if isinstance(spec, str) else list(spec)
    names = [_name_of(item) for item in items]
    unmatched = [p for p in patterns if not (fnmatch.filter(names, p) if _is_glob(p) else p in names)]
    if unmatched:
        raise ValueError(
            f"no site matches {', '.join(map(repr, unmatched))}; known sites start with "
            f"{', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
        )
    keep = set()
    for pattern in patterns:
        keep.update(fnmatch.filter(names, pattern) if _is_glob(pattern) else [pattern])
    return [item for item in items if _name_of(item) in keep]
