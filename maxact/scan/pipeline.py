"""The scan driver's seams to the modules upstream of it (models, corpus, batching, sites, hooks).

Everything the loop needs from other modules goes through these few functions, so the loop itself
never depends on their internals, and their errors become one-line ScanErrors here.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from maxact.scan.config import ScanConfig
from maxact.scan.errors import ScanError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# device, demo model
# ------------------------------------------------------------------------------------------------


def concrete_device(name: str) -> torch.device:
    """``cuda`` -> ``cuda:<current index>`` (set_device and per-device caches need an index)."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_device(config: ScanConfig) -> str:
    """``--device`` or the default: cuda when present, else cpu."""
    if config.device:
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise ScanError(f"--device {config.device}: no CUDA device is available (use --device cpu)")
        return config.device
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Model:
    """The loaded base model plus what the loop and the metadata need."""

    loaded: Any                      # maxact.models.LoadedModel
    pad_token_id: int
    vocab_size: int | None

    def __getattr__(self, name: str) -> Any:   # model, tokenizer, name, model_type, ... of LoadedModel
        return getattr(self.loaded, name)

    @property
    def input_device(self) -> torch.device:
        """Where input ids must live: the token embedding's device (the first GPU under device_map)."""
        return self.loaded.model.get_input_embeddings().weight.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """One forward of the base model (no lm_head, no KV cache); the output is dropped."""
        self.loaded.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


def load_model(config: ScanConfig, device: torch.device) -> Model:
    """Load ``--model`` (``demo``, directory, hub id, GGUF, ``random:<arch>``); errors -> ScanError."""
    from maxact.models import ModelLoadError, load_model as _load

    try:
        loaded = _load(config.model, dtype=config.dtype, attn=config.attn,
                       device=None if config.device_map else str(device), device_map=config.device_map,
                       trust_remote_code=config.trust_remote_code, seed=config.seed)
    except ModelLoadError as exc:
        raise ScanError(f"--model {config.model}: {exc}") from None
    cfg = getattr(loaded.model, "config", None)
    text_cfg = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    vocab = getattr(text_cfg, "vocab_size", None)
    pad = None
    if loaded.tokenizer is not None:
        pad = getattr(loaded.tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(text_cfg, "pad_token_id", None)
    loaded.model.eval()
    return Model(loaded=loaded, pad_token_id=int(pad) if isinstance(pad, int) else 0, vocab_size=vocab)


def discover_sites(model: Model, config: ScanConfig) -> list[Any]:
    """The hook sites of ``--sites`` (paper / linear-inputs / all / regex); errors -> ScanError."""
    from maxact.discovery import SiteDiscoveryError, find_sites

    try:
        sites = find_sites(model.model, config.sites)
    except SiteDiscoveryError as exc:
        raise ScanError(f"--sites {config.sites}: {exc}") from None
    if not sites:
        raise ScanError(f"--sites {config.sites}: no site found in {type(model.model).__name__}")
    return sites


# ------------------------------------------------------------------------------------------------
# corpus and batches
# ------------------------------------------------------------------------------------------------


def load_corpus(config: ScanConfig, tokenizer: Any, vocab_size: int | None) -> Any:
    """``--corpus`` as a TokenizedCorpus; CorpusError (missing file, bad line) -> ScanError."""
    from maxact.corpus import CorpusError, load_corpus as _load

    try:
        return _load(config.corpus, tokenizer, max_seq_len=config.max_seq_len,
                     max_samples=config.max_samples, skip_bad_lines=config.skip_bad_lines,
                     vocab_size=vocab_size)
    except CorpusError as exc:
        raise ScanError(f"--corpus: {exc}") from None
    except FileNotFoundError as exc:
        raise ScanError(f"--corpus {config.corpus}: not found ({exc})") from None


def make_batches(corpus: Any, config: ScanConfig, pad_token_id: int | None) -> Any:
    """Length-grouped batches by token budget (a lazy, indexable sequence of Batch)."""
    from maxact.batching import make_batches as _make

    return _make(corpus, config.tokens_per_batch, pad_token_id=pad_token_id or 0)


# ------------------------------------------------------------------------------------------------
# statistics-state helpers
# ------------------------------------------------------------------------------------------------


def abs_max_tensor(stats: Any) -> torch.Tensor:
    """0-d device tensor max|x| of an ActivationStats (-inf when empty); no sync."""
    minmax = stats.state.minmax
    return torch.maximum(-minmax[0], minmax[1])


def abs_max_value(stats: Any) -> float:
    """max|x| as a float (NaN when the state saw nothing); syncs."""
    if int(stats.state.counts[0]) == 0:
        return math.nan
    return float(abs_max_tensor(stats))


def live_state(stats: Any) -> tuple[list[torch.Tensor], Any]:
    """The tensors an OOM guard must snapshot, and the object holding host-side counters."""
    st = stats.state
    return [getattr(st, name) for name in st.persistent_names()], st



# ------------------------------------------------------------------------------------------------
# hooks
# ------------------------------------------------------------------------------------------------


def new_batch_context() -> Any:
    from maxact.hooks import BatchContext

    return BatchContext()


def set_batch_context(ctx: Any, *, mask: torch.Tensor, sample_ids: torch.Tensor, positions: torch.Tensor) -> None:
    """Install one batch's row tensors ([B*T] device tensors) for the hooks."""
    ctx.set(mask, sample_ids, positions)


@contextlib.contextmanager
def attach_hooks(model: Model, states: dict[str, Any], ctx: Any) -> Iterator[Any]:
    """Attach the hooks feeding ``states`` (site name -> SiteState); always removed on exit."""
    from maxact.hooks import attach

    specs = [st.spec for st in states.values()]
    with attach(model.model, specs, states, ctx) as handle:
        yield handle
