"""Find hook sites in a decoder-only model by its module structure.

No class list is consulted. The rules, applied to whatever model is given (a base model, a
``*ForCausalLM`` or a multimodal wrapper):

- token embedding: ``model.get_input_embeddings()``. Recent transformers scale Gemma embeddings
  inside the embedding module (``Gemma3TextScaledWordEmbedding.forward`` multiplies by
  ``embed_scale``), so its output is already the residual stream's first value. For the Gemma family
  on older transformers, where the base model multiplied after the lookup, the site captures the
  first decoder layer's input instead (``_SCALES_EMBEDDING_OUTSIDE``).
- decoder layers: the ``nn.ModuleList`` whose every element has an attention-like child (``self_attn``,
  ``linear_attn``, ``attention``, ... ; norms excluded) and an MLP-like child (``mlp``, ``feed_forward``,
  ``block_sparse_moe``, ...). Among several, the one sharing the longest path prefix with the token
  embedding wins (so a vision tower's blocks never beat the text layers), then the longest.
- attention / MLP: those children, per layer (hybrid models mix ``linear_attn`` and ``self_attn``).
- MoE: an MLP child holding an experts container (an ``nn.ModuleList`` of experts, or a module with
  3-D expert parameters) is an MoE block; its router is the child whose 2-D ``weight`` is
  ``[num_experts, hidden]`` (an ``nn.Linear`` or a custom router module). The router site takes the
  floating tensor of the router's output whose last dimension is ``num_experts`` (the logits: first in
  Qwen/gpt-oss, last in BailingMoe).
- gate: the shallowest ``gate_proj``-like ``nn.Linear`` inside the MLP child outside the experts and the
  router: the dense MLP's gate, or, for MoE blocks, the shared expert's gate. A fused ``gate_up_proj``
  Linear gives its first half (``part="gate_half"``). MoE blocks without a shared expert have no gate
  site: routed experts compute their gate inside the experts module and never expose it.
- final norm: the norm-like child of the layer list's parent registered after the layer list.

``mode="linear-inputs"`` adds the input of every ``nn.Linear`` of the text backbone (``{module}.input``).
Fused experts hold 3-D parameters instead of ``nn.Linear`` modules; for each one this mode adds a site for the input of
its gate/up projection (``{experts}.{param}.input``: every routed token, locations exact) and, with
``per_expert=True``, one site per expert (``{experts}.{e}.{param}.input``) that sees the same tensor with
rows not routed to that expert masked out (exact, located; costs one read of the block input per
expert). The input of the fused ``down_proj`` (``act(gate) * up`` per expert) never leaves the experts'
forward and is not captured. Experts kept as ``nn.ModuleList`` of ``nn.Linear`` get one site per Linear
whose rows are the routed tokens only (their locations are unavailable, see :mod:`maxact.hooks`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from maxact.sites import RESIDUAL_COMPONENTS, SiteSpec, parse_site, site_name

__all__ = [
    "SiteDiscoveryError",
    "LayerMap",
    "ModelMap",
    "OVERRIDES",
    "map_model",
    "find_sites",
    "find_backbone",
]

logger = logging.getLogger(__name__)

_SITE_MODES = ("paper", "linear-inputs", "all")
_ATTN_NAMES = ("self_attn", "linear_attn", "attention", "self_attention", "attn", "mixer")
_MLP_NAMES = ("mlp", "block_sparse_moe", "feed_forward", "moe", "ffn")
_ATTN_PATTERN = re.compile(r"attn|attention|mixer")
_MLP_PATTERN = re.compile(r"mlp|moe|ffn|feed_?forward")
_GATE_NAMES = ("gate_proj", "w1", "wi_0")
_FUSED_GATE_NAMES = ("gate_up_proj",)
_FINAL_NORM_NAMES = ("norm", "final_norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f")
# Expert parameters whose input is the block input (the gate/up side); the down side is not.
_EXPERT_INPUT_PARAM = re.compile(r"gate|up|w1|w3|w13")
# Gemma-family models multiplied the looked-up embedding by sqrt(hidden) in the base model's forward
# before transformers moved that into the embedding module (which then has `embed_scale`).
_SCALES_EMBEDDING_OUTSIDE = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text", "paligemma", "recurrent_gemma"})

# Per-model_type corrections where structure alone is ambiguous. Keys: "attn", "mlp" (child names
# inside a decoder layer), "gate" (path inside the MLP child), "router" (child name inside the MoE
# block), "final_norm" (path inside the layer list's parent). No model type of the installed
# transformers needs one today; the table exists so a new architecture is a one-line fix.
OVERRIDES: dict[str, dict[str, str]] = {}


class SiteDiscoveryError(RuntimeError):
    """The model's structure could not be mapped onto the paper's sites."""


@dataclass
class LayerMap:
    """What discovery found in one decoder layer (paths relative to the model given)."""

    index: int
    path: str
    attn: str
    mlp: str
    gate: str | None = None
    gate_part: str | None = None
    gate_channels: int = 0
    router: str | None = None
    experts: str | None = None
    experts_fused: bool = False
    num_experts: int = 0


@dataclass
class ModelMap:
    """The mapped structure of a model: where every paper site lives."""

    model_type: str | None
    hidden_size: int
    embedding: str
    embedding_capture: str  # "output" of the embedding module, or "input" of the first layer
    layers_path: str
    layers: list[LayerMap] = field(default_factory=list)
    final_norm: str | None = None

    @property
    def backbone(self) -> str:
        """Path of the module holding the layer list (the text backbone)."""
        return self.layers_path.rpartition(".")[0]


# ---------------------------------------------------------------------------------------------
# structure helpers


def _is_norm(name: str, module: nn.Module) -> bool:
    return "norm" in name.lower() or "norm" in type(module).__name__.lower()


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _role_child(layer: nn.Module, preferred: tuple[str, ...], pattern: re.Pattern, override: str | None) -> str | None:
    """Name of the child of ``layer`` playing a role (attention or MLP), or None."""
    children = {n: c for n, c in layer.named_children() if _has_params(c) and not _is_norm(n, c)}
    if override is not None:
        return override if override in children else None
    for name in preferred:
        if name in children:
            return name
    for name, child in children.items():
        if pattern.search(name.lower()) or pattern.search(type(child).__name__.lower()):
            return name
    return None


def _config_of(model: nn.Module):
    config = getattr(model, "config", None)
    return getattr(config, "text_config", None) or config


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def _module_paths(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}


def _embedding_path(model: nn.Module, paths: dict[int, str]) -> str | None:
    getter = getattr(model, "get_input_embeddings", None)
    embedding = None
    if callable(getter):
        try:
            embedding = getter()
        except (NotImplementedError, AttributeError):
            embedding = None
    if isinstance(embedding, nn.Module) and id(embedding) in paths:
        return paths[id(embedding)]
    # No accessor: the largest nn.Embedding is the token embedding.
    embeddings = [(m.num_embeddings, n) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    return max(embeddings)[1] if embeddings else None


def _common_prefix_depth(a: str, b: str) -> int:
    depth = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        depth += 1
    return depth


def _describe(model: nn.Module, limit: int = 6) -> str:
    """Short account of a model's module lists, for error messages."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        top = ", ".join(f"{n} ({type(c).__name__})" for n, c in model.named_children())
        return f"no nn.ModuleList found; top-level children: {top or 'none'}"
    parts = []
    for name, modules in sorted(lists, key=lambda item: -len(item[1]))[:limit]:
        children = ", ".join(n for n, _ in modules[0].named_children()) or "no children"
        parts.append(f"'{name or '<root>'}' ({len(modules)} x {type(modules[0]).__name__}: {children})")
    return "module lists found: " + "; ".join(parts)


def _discovery_error(model: nn.Module, problem: str) -> SiteDiscoveryError:
    return SiteDiscoveryError(
        f"cannot map {type(model).__name__} (model_type {_model_type(model)!r}) onto decoder sites: {problem}. "
        f"{_describe(model)}. Pass sites explicitly with --sites REGEX (a regex over module names, e.g. "
        f"--sites 'layers\\.\\d+$'), or add an entry to maxact.discovery.OVERRIDES."
    )


def _find_layer_list(model: nn.Module, embedding_path: str | None, override: dict[str, str]) -> str:
    if "layers" in override:
        return override["layers"]
    candidates = []
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if all(
            _role_child(layer, _ATTN_NAMES, _ATTN_PATTERN, override.get("attn"))
            and _role_child(layer, _MLP_NAMES, _MLP_PATTERN, override.get("mlp"))
            for layer in module
        ):
            near = _common_prefix_depth(path, embedding_path) if embedding_path else 0
            candidates.append((near, len(module), -path.count("."), path))
    if not candidates:
        raise _discovery_error(
            model, "no nn.ModuleList whose every element has an attention-like child and an MLP-like child"
        )
    return max(candidates)[3]


def _find_final_norm(model: nn.Module, layers_path: str, override: dict[str, str]) -> str | None:
    parent_path, _, layers_name = layers_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    join = (lambda name: f"{parent_path}.{name}") if parent_path else (lambda name: name)
    if "final_norm" in override:
        return join(override["final_norm"])
    names = [name for name, _ in parent.named_children()]
    after = names[names.index(layers_name) + 1:] if layers_name in names else names
    norms = [name for name in after if _is_norm(name, parent.get_submodule(name))]
    for name in _FINAL_NORM_NAMES:
        if name in norms:
            return join(name)
    return join(norms[0]) if norms else None


def _find_experts(mlp: nn.Module) -> tuple[str | None, int, bool]:
    """(child name, number of experts, fused) of the experts container inside an MLP/MoE block."""
    for name, child in mlp.named_children():
        if isinstance(child, nn.ModuleList) and len(child) > 1:
            return name, len(child), False
        stacked = [p for p in child.parameters(recurse=False) if p.dim() == 3]
        if stacked:
            return name, int(stacked[0].shape[0]), True
    return None, 0, False


def _find_router(mlp: nn.Module, experts: str, num_experts: int, hidden: int, override: str | None) -> str | None:
    if override is not None:
        return override
    for name, child in mlp.named_children():
        weight = getattr(child, "weight", None)
        if name == experts or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            continue
        if tuple(weight.shape) == (num_experts, hidden):
            return name
    return None


def _find_gate(mlp: nn.Module, skip: tuple[str, ...], override: str | None) -> tuple[str | None, str | None, int]:
    """(path inside the MLP, part, channels) of the SwiGLU gate projection, or (None, None, 0)."""
    if override is not None:
        module = mlp.get_submodule(override)
        fused = override.rsplit(".", 1)[-1] in _FUSED_GATE_NAMES
        return override, ("gate_half" if fused else None), module.out_features // (2 if fused else 1)
    found = []
    for path, module in mlp.named_modules():
        if not path or not isinstance(module, nn.Linear):
            continue
        if any(path == s or path.startswith(s + ".") for s in skip):
            continue
        leaf = path.rsplit(".", 1)[-1]
        if leaf in _GATE_NAMES:
            found.append((path.count("."), path, None, module.out_features))
        elif leaf in _FUSED_GATE_NAMES:
            found.append((path.count("."), path, "gate_half", module.out_features // 2))
    if not found:
        return None, None, 0
    _, path, part, channels = min(found)
    return path, part, channels


def find_backbone(model: nn.Module) -> tuple[str, nn.Module]:
    """(path, module) of the text backbone: the parent of the decoder-layer list.

    For a ``*ForCausalLM`` this is ``model``'s base model (``.model``); for a multimodal wrapper the
    language model (``.language_model``); for a base model, the model itself (path ``""``).
    """
    backbone = map_model(model).backbone
    return backbone, (model.get_submodule(backbone) if backbone else model)


def map_model(model: nn.Module, *, overrides: dict[str, str] | None = None) -> ModelMap:
    """Map a model's structure onto the paper's sites; raises :class:`SiteDiscoveryError`."""
    model_type = _model_type(model)
    override = {**OVERRIDES.get(model_type or "", {}), **(overrides or {})}
    paths = _module_paths(model)
    embedding_path = _embedding_path(model, paths)
    if embedding_path is None:
        raise _discovery_error(model, "no token embedding (get_input_embeddings() and no nn.Embedding)")
    layers_path = _find_layer_list(model, embedding_path, override)
    layer_list = model.get_submodule(layers_path)
    config = _config_of(model)
    hidden = int(getattr(config, "hidden_size", 0) or model.get_submodule(embedding_path).weight.shape[-1])
    # Some checkpoints append layers the forward never runs (multi-token-prediction heads).
    count = len(layer_list)
    configured = getattr(config, "num_hidden_layers", None)
    if isinstance(configured, int) and 0 < configured < count:
        count = configured

    layers = []
    for index in range(count):
        layer = layer_list[index]
        path = f"{layers_path}.{index}"
        attn = _role_child(layer, _ATTN_NAMES, _ATTN_PATTERN, override.get("attn"))
        mlp_name = _role_child(layer, _MLP_NAMES, _MLP_PATTERN, override.get("mlp"))
        entry = LayerMap(index=index, path=path, attn=f"{path}.{attn}", mlp=f"{path}.{mlp_name}")
        mlp = layer.get_submodule(mlp_name)
        experts, num_experts, fused = _find_experts(mlp)
        skip: tuple[str, ...] = ()
        if experts is not None:
            router = _find_router(mlp, experts, num_experts, hidden, override.get("router"))
            if router is not None:
                entry.router = f"{entry.mlp}.{router}"
                skip = (experts, router)
            else:
                logger.warning("layer %d: experts found at %s.%s but no router; no router site",
                               index, entry.mlp, experts)
                skip = (experts,)
            entry.experts, entry.experts_fused, entry.num_experts = f"{entry.mlp}.{experts}", fused, num_experts
        gate, part, channels = _find_gate(mlp, skip, override.get("gate"))
        if gate is not None:
            entry.gate, entry.gate_part, entry.gate_channels = f"{entry.mlp}.{gate}", part, channels
        layers.append(entry)

    embedding_capture, embedding_module = "output", embedding_path
    if model_type in _SCALES_EMBEDDING_OUTSIDE and not hasattr(model.get_submodule(embedding_path), "embed_scale"):
        embedding_capture, embedding_module = "input", layers[0].path
    return ModelMap(
        model_type=model_type,
        hidden_size=hidden,
        embedding=embedding_module,
        embedding_capture=embedding_capture,
        layers_path=layers_path,
        layers=layers,
        final_norm=_find_final_norm(model, layers_path, override),
    )


# ---------------------------------------------------------------------------------------------
# site lists


def _spec(component: str, layer: int | None, module: str, channels: int, *, capture: str = "output",
          part: str | None = None, name: str | None = None, expert: int | None = None) -> SiteSpec:
    return SiteSpec(
        name=name or site_name(component, layer),
        component=component,
        layer=layer,
        module_name=module,
        capture=capture,
        part=part,
        track_tokens=component in RESIDUAL_COMPONENTS,
        num_channels=int(channels),
        expert=expert,
    )


def _paper_sites(model: nn.Module, mapped: ModelMap) -> list[SiteSpec]:
    hidden = mapped.hidden_size
    embedding = model.get_submodule(mapped.embedding)
    embedding_dim = hidden if mapped.embedding_capture == "input" else int(embedding.weight.shape[-1])
    sites = [_spec("embedding", None, mapped.embedding, embedding_dim, capture=mapped.embedding_capture)]
    for layer in mapped.layers:
        i = layer.index
        sites.append(_spec("attn", i, layer.attn, hidden))
        if layer.router is not None:
            sites.append(_spec("router", i, layer.router, layer.num_experts))
        if layer.gate is not None:
            sites.append(_spec("gate", i, layer.gate, layer.gate_channels, part=layer.gate_part))
        sites.append(_spec("mlp", i, layer.mlp, hidden))
        sites.append(_spec("hidden", i, layer.path, hidden))
    if mapped.final_norm is not None:
        sites.append(_spec("final_norm", None, mapped.final_norm, hidden))
    else:
        logger.warning("no final norm found after %s; no final_norm site", mapped.layers_path)
    return sites


def _layer_of(path: str, mapped: ModelMap) -> int | None:
    prefix = mapped.layers_path + "."
    if not path.startswith(prefix):
        return None
    head = path[len(prefix):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _fused_expert_sites(model: nn.Module, layer: LayerMap, hidden: int, per_expert: bool) -> list[SiteSpec]:
    experts = model.get_submodule(layer.experts)
    params = [(n, p) for n, p in experts.named_parameters(recurse=False)
              if p.dim() == 3 and _EXPERT_INPUT_PARAM.search(n) and "down" not in n]
    if not params:
        logger.warning("%s: no gate/up expert parameter; no expert input site", layer.experts)
        return []
    param = params[0][0]
    # The experts module's first argument is the [tokens, hidden] block input every routed expert reads.
    channels = hidden
    sites = [_spec("linear_input", layer.index, layer.experts, channels, capture="input",
                   name=site_name("linear_input", module=f"{layer.experts}.{param}"))]
    if per_expert:
        sites += [
            _spec("linear_input", layer.index, layer.experts, channels, capture="input", expert=e,
                  name=site_name("linear_input", module=f"{layer.experts}.{e}.{param}"))
            for e in range(layer.num_experts)
        ]
    return sites


def _linear_input_sites(model: nn.Module, mapped: ModelMap, per_expert: bool) -> list[SiteSpec]:
    # Only the text backbone: never an lm_head or a vision tower the given model may also hold.
    backbone = mapped.backbone
    root = model.get_submodule(backbone) if backbone else model
    sites = []
    fused = {layer.experts: layer for layer in mapped.layers if layer.experts_fused}
    for sub_path, module in root.named_modules():
        path = f"{backbone}.{sub_path}" if backbone and sub_path else (sub_path or backbone)
        if isinstance(module, nn.Linear):
            sites.append(_spec("linear_input", _layer_of(path, mapped), path, module.in_features,
                               capture="input", name=site_name("linear_input", module=path)))
        elif path in fused:
            sites += _fused_expert_sites(model, fused[path], mapped.hidden_size, per_expert)
    return sites


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    if hasattr(value, "to_tuple"):
        return _first_tensor(value.to_tuple())
    return None


def _probe_channels(model: nn.Module, paths: list[str]) -> dict[str, int]:
    """Last-dimension sizes of the first floating tensor each module outputs on a 4-token forward."""
    seen: dict[str, int] = {}

    def recorder(path):
        def hook(_module, _args, output):
            tensor = _first_tensor(output)
            if tensor is not None and tensor.is_floating_point() and tensor.dim() >= 1 and path not in seen:
                seen[path] = int(tensor.shape[-1])
        return hook

    embedding_path = _embedding_path(model, _module_paths(model))
    if embedding_path is None:
        raise SiteDiscoveryError(f"cannot probe {type(model).__name__}: no token embedding to feed token ids to")
    embedding = model.get_submodule(embedding_path)
    vocab = int(getattr(embedding, "num_embeddings", 0) or embedding.weight.shape[0])
    input_ids = (torch.arange(4, device=embedding.weight.device) % vocab)[None]
    handles = [model.get_submodule(p).register_forward_hook(recorder(p)) for p in paths]
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _regex_sites(model: nn.Module, pattern: str, mapped: ModelMap | None) -> list[SiteSpec]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise SiteDiscoveryError(f"--sites {pattern!r} is neither paper, linear-inputs, all nor a valid regex: {exc}")
    paths = [path for path, _ in model.named_modules() if path and regex.search(path)]
    if not paths:
        raise SiteDiscoveryError(f"--sites regex {pattern!r} matches no module name of {type(model).__name__}")
    channels = _probe_channels(model, paths)
    dropped = [p for p in paths if p not in channels]
    if dropped:
        logger.warning("--sites %r: %d module(s) produced no floating tensor on a probe forward and are "
                       "skipped: %s", pattern, len(dropped), ", ".join(dropped[:8]))
    sites = []
    for path in paths:
        if path in channels:
            name = site_name("module", module=path)
            # without a mapped layer list, fall back to a layers.{i}-like segment of the path
            layer = _layer_of(path, mapped) if mapped else parse_site(name)[1]
            sites.append(_spec("module", layer, path, channels[path], name=name))
    return sites


def find_sites(model: nn.Module, mode: str = "paper", *, per_expert: bool = True,
               overrides: dict[str, str] | None = None) -> list[SiteSpec]:
    """The hook sites of ``model`` for a ``--sites`` mode.

    Args:
        model: the model the hooks will be attached to (names are relative to it).
        mode: ``"paper"`` (embedding, per layer attn / router / gate / mlp / hidden, final_norm),
            ``"linear-inputs"`` (input of every nn.Linear, plus fused-expert inputs), ``"all"`` (both),
            or a regex over module names (output of each matching module, component ``module``).
        per_expert: in linear-inputs mode, one site per expert of fused-expert modules.
        overrides: structure corrections, as in :data:`OVERRIDES`, taking precedence over it.

    Raises:
        SiteDiscoveryError: the structure cannot be mapped (the message names what was found and how
            to pass sites explicitly), or a regex matches nothing.
    """
    if mode not in _SITE_MODES:
        try:
            mapped = map_model(model, overrides=overrides)
        except SiteDiscoveryError:
            mapped = None  # a regex needs no decoder structure; layer indices are then unknown
        return _regex_sites(model, mode, mapped)
    mapped = map_model(model, overrides=overrides)
    sites: list[SiteSpec] = []
    if mode in ("paper", "all"):
        sites += _paper_sites(model, mapped)
    if mode in ("linear-inputs", "all"):
        sites += _linear_input_sites(model, mapped, per_expert)
    names = [site.name for site in sites]
    if len(set(names)) != len(names):
        raise SiteDiscoveryError(f"duplicate site names from {type(model).__name__}: check OVERRIDES")
    return sites
