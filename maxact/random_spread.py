"""Random-initialised models spread over several devices (``random:<arch>`` with ``device_map="auto"``).

A model larger than one GPU (e.g. ``random:qwen2.5-72b``, about 145 GB in bf16) can be neither built
on one GPU nor, in reasonable time, initialised on the host. So the model is built with empty
parameters (buffers such as rotary frequencies are computed as usual), each decoder layer's
parameters are allocated directly on its GPU, everything outside the layers goes to the first one,
the weights are initialised in place by the model's own ``initialize_weights`` (on the GPUs), and
accelerate's ``dispatch_model`` moves activations between devices during the forward.

The layout depends only on the number of layers and of devices (contiguous, even split), never on
free memory, so every data-parallel replica of a scan gets the same layout and, from the same seed,
the same weights.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)


def layer_devices(num_layers: int, devices: Sequence[Any]) -> list[Any]:
    """Device of each of ``num_layers`` decoder layers: contiguous blocks of (nearly) equal size."""
    if not devices:
        raise ValueError("no device to place the model on")
    n = len(devices)
    return [devices[i * n // num_layers] for i in range(num_layers)]


def find_layer_list(model: nn.Module, num_layers: int | None = None) -> str:
    """Name of the decoder-layer ModuleList: the one of ``num_layers`` entries, else the longest."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no layer list to spread over devices")
    exact = [name for name, m in lists if num_layers is not None and len(m) == num_layers]
    if exact:
        return exact[0]
    return max(lists, key=lambda it: len(it[1]))[0]


def plan_device_map(model: nn.Module, devices: Sequence[Any], num_layers: int | None = None) -> dict[str, Any]:
    """An accelerate device map: layers split evenly over ``devices``, the rest on ``devices[0]``.

    Keys are module names covering every parameter and buffer exactly once (the layers one by one,
    every other module as high up the tree as possible).
    """
    layers_name = find_layer_list(model, num_layers)
    layers = model.get_submodule(layers_name)
    out: dict[str, Any] = {}
    for i, dev in enumerate(layer_devices(len(layers), devices)):
        out[f"{layers_name}.{i}" if layers_name else str(i)] = dev

    def walk(module: nn.Module, name: str) -> None:
        if name == layers_name:
            return
        on_path = layers_name == name or layers_name.startswith(f"{name}.") if name else True
        if not on_path:
            out[name] = devices[0]
            return
        own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        if own:
            raise ValueError(f"module {name or type(module).__name__!r} holds tensors "
                             f"({own[0][0]}) next to the layer list; cannot spread it")
        for child_name, child in module.named_children():
            walk(child, f"{name}.{child_name}" if name else child_name)

    walk(model, "")
    return out


def materialize(model: nn.Module, device_map: dict[str, Any]) -> None:
    """Allocate every empty (meta) parameter on its device and move buffers there (values unset)."""
    done: dict[int, nn.Parameter] = {}   # tied parameters stay tied
    for name, dev in device_map.items():
        root = model.get_submodule(name)
        for module in root.modules():
            for pname, p in list(module._parameters.items()):
                if p is None:
                    continue
                if id(p) not in done:
                    data = torch.empty_like(p, device=dev) if p.device.type == "meta" else p.data.to(dev)
                    done[id(p)] = nn.Parameter(data, requires_grad=False)
                module._parameters[pname] = done[id(p)]
            for bname, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[bname] = b.to(dev)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise ValueError(f"{len(left)} tensors were not placed (e.g. {left[0]})")


def build_spread(config: Any, *, dtype: torch.dtype, attn: str, seed: int,
                 devices: Sequence[Any] | None = None, build: Any = None) -> nn.Module:
    """The base model of ``config``, randomly initialised, its layers spread over ``devices``.

    ``devices`` defaults to every visible GPU. ``build(config)`` constructs the model (default:
    ``AutoModel.from_config`` with ``dtype`` and ``attn``); it runs with parameters on the meta device.
    """
    from accelerate import dispatch_model, init_empty_weights
    from transformers import AutoModel

    if devices is None:
        devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if not devices:
        raise ValueError("device_map='auto' needs at least one GPU")
    if build is None:
        def build(cfg: Any) -> nn.Module:
            return AutoModel.from_config(cfg, dtype=dtype, attn_implementation=attn)
    with init_empty_weights(include_buffers=False):
        model = build(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    device_map = plan_device_map(model, devices, getattr(text, "num_hidden_layers", None))
    materialize(model, device_map)
    # Construction marked the (then empty) modules initialised; initialise them for real now.
    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.initialize_weights()
    counts: dict[str, int] = {}
    for dev in device_map.values():
        counts[str(dev)] = counts.get(str(dev), 0) + 1
    log.info("random model spread over %s (modules per device: %s)", ", ".join(map(str, devices)), counts)
    if len({str(d) for d in device_map.values()}) == 1:
        return model.to(next(iter(device_map.values())))
    return dispatch_model(model, device_map={k: _accelerate_device(v) for k, v in device_map.items()})


def _accelerate_device(dev: Any) -> Any:
    """accelerate device maps name GPUs by index."""
    dev = torch.device(dev)
    return dev.index if dev.type == "cuda" and dev.index is not None else str(dev)
