"""The frozen configuration of one scan (what the CLI parses, what ``stats.json`` records)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maxact.scan.errors import ScanError

#: |x| quantiles written for every site (CONTRACTS.md section 4).
QUANTILES: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999)

#: The model scanned when none is named: Gemma 3 270M from the `demo` extra.
DEMO_MODEL = "demo"
DEMO_MODEL_NAME = "gemma-3-270m-q4_k_m"   # the name maxact.models gives it

DTYPES = ("bfloat16", "float16", "float32")
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
SITE_MODES = ("paper", "linear-inputs", "all")
BACKENDS = ("auto", "triton", "reference")
TOKEN_MEDIAN_MODES = ("all", "candidates")
EXPORT_FORMATS = ("max-act-llm",)


def default_model_name(model: str) -> str:
    """Short name of a model spec, used for ``results/<model-name>/`` and the metadata.

    ``demo`` -> ``gemma-3-270m-q4_k_m``; a directory or file -> its base name without a ``.gguf`` suffix;
    a hub id ``org/name`` -> ``name``; ``random:qwen3`` -> ``random-qwen3``.
    """
    if model == DEMO_MODEL:
        return DEMO_MODEL_NAME
    text = model.rstrip("/\\")
    if ":" in text and not Path(text).exists():
        text = text.replace(":", "-")
    name = Path(text).name or text
    if name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) or "model"


@dataclass(frozen=True)
class ScanConfig:
    """Everything that decides what a scan measures and where it writes.

    Built by the CLI (``python -m maxact.scan``) or directly for the Python API ``scan(config)``.
    ``to_dict()`` is stored in ``stats.json`` under ``metadata.config`` and in checkpoints (a resume
    refuses a checkpoint written under a different measurement-relevant configuration).
    """

    # model
    model: str = DEMO_MODEL
    dtype: str = "bfloat16"
    attn: str = "sdpa"
    device: str | None = None            # None: cuda when present, else cpu
    device_map: str | None = None        # "auto": spread one replica over the visible GPUs
    gpus_per_replica: int | None = None  # torchrun: GPUs each process (replica) sees; None: all / 1 per rank
    dist_timeout_s: float = 1800.0       # torchrun: collectives fail after this long (a dead or hung rank)
    trust_remote_code: bool = False
    sites: str = "paper"                 # paper | linear-inputs | all | a regex over module names
    # corpus
    corpus: str = "builtin"
    max_samples: int | None = None
    skip_bad_lines: bool = False
    seed: int = 0
    # batching
    tokens_per_batch: int = 16384
    max_seq_len: int = 4096
    skip_first_tokens: int = 0
    # statistics
    topk: int = 16
    track_channels: bool = True
    track_tokens: bool = True
    token_median: str = "candidates"   # "all": every token's median (the paper's max/mean ratio)
    sun_t_val: float = 100.0
    sun_t_ratio: float = 1000.0
    backend: str = "auto"
    min_expert_tokens: int = 16          # warn about MoE experts routed fewer tokens than this
    # output
    out: str | None = None               # None: results/<model-name>/
    export: tuple[str, ...] = ()
    checkpoint_every: int = 0            # batches; 0 = only on SIGINT/SIGTERM (when --out is writable)
    resume: bool = False
    # performance
    sync_every: int = 20                 # batches between the progress bar's host syncs (running M)
    memory_check: bool = True            # refuse a scan whose estimated peak memory does not fit
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ScanError (a one-line message) on an impossible setting."""
        _choice("--dtype", self.dtype, DTYPES)
        _choice("--attn", self.attn, ATTN_IMPLEMENTATIONS)
        _choice("--backend", self.backend, BACKENDS)
        _choice("--token-median", self.token_median, TOKEN_MEDIAN_MODES)
        for fmt in self.export:
            _choice("--export", fmt, EXPORT_FORMATS)
        if self.device is not None and not re.fullmatch(r"(cpu|cuda|cuda:\d+|mps|xpu(:\d+)?)", self.device):
            raise ScanError(f"--device: expected cpu, cuda or cuda:N, got {self.device!r}")
        if self.device_map not in (None, "auto"):
            raise ScanError(f"--device-map: only 'auto' is supported, got {self.device_map!r}")
        if self.sites not in SITE_MODES:
            try:
                re.compile(self.sites)
            except re.error as exc:
                raise ScanError(f"--sites: {self.sites!r} is neither paper, linear-inputs, all "
                                f"nor a valid regex ({exc})") from None
        _positive("--tokens-per-batch", self.tokens_per_batch)
        _positive("--max-seq-len", self.max_seq_len)
        if self.max_samples is not None:
            _positive("--max-samples", self.max_samples)
        _non_negative("--topk", self.topk)
        _non_negative("--skip-first-tokens", self.skip_first_tokens)
        if self.skip_first_tokens >= self.max_seq_len:
            raise ScanError(f"--skip-first-tokens {self.skip_first_tokens} leaves nothing of a "
                            f"{self.max_seq_len}-token sample")
        _non_negative("--checkpoint-every", self.checkpoint_every)
        _non_negative("--min-expert-tokens", self.min_expert_tokens)
        _positive("--sync-every", self.sync_every)
        if not self.dist_timeout_s > 0:
            raise ScanError(f"--dist-timeout: expected a positive number of seconds, got {self.dist_timeout_s!r}")
        if self.gpus_per_replica is not None:
            _positive("--gpus-per-replica", self.gpus_per_replica)
            if self.gpus_per_replica > 1 and self.device_map != "auto":
                raise ScanError(f"--gpus-per-replica {self.gpus_per_replica} needs --device-map auto "
                                "(a replica spreads over its GPUs through the device map)")
            if self.device is not None and not self.device.startswith("cuda"):
                raise ScanError(f"--gpus-per-replica: replicas live on GPUs, not on --device {self.device}")
        if not self.sun_t_val > 0 or not self.sun_t_ratio > 0:
            raise ScanError("--sun-t-val and --sun-t-ratio must be positive")

    # -- derived ------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return default_model_name(self.model)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("results") / self.model_name

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    @property
    def first_kept_position(self) -> int:
        """First position that enters the statistics (positions < this are masked out)."""
        return self.skip_first_tokens

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScanConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "export" in kwargs:
            kwargs["export"] = tuple(kwargs["export"])
        return cls(**kwargs)

    def measurement_fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it.

        Output-only and speed-only settings (progress, sync cadence, export, checkpoint cadence)
        may change between the interrupted run and the resumed one.
        """
        skip = {"out", "export", "checkpoint_every", "resume", "sync_every", "progress", "min_expert_tokens",
                "memory_check", "gpus_per_replica", "dist_timeout_s"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    def replace(self, **changes: Any) -> "ScanConfig":
        return dataclasses.replace(self, **changes)


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ScanError(f"{flag}: expected one of {', '.join(allowed)}, got {value!r}")


def _positive(flag: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ScanError(f"{flag}: expected a positive integer, got {value!r}")


def _non_negative(flag: str, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise ScanError(f"{flag}: expected a non-negative integer, got {value!r}")
