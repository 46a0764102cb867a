"""Pre-flight memory estimate of a scan: does the largest batch fit next to the model and the states?

Peak memory = parameters + statistics states + what the forward of the largest batch adds. The first
two are measured (they are allocated before the check runs); the rest is estimated from the model
config, conservatively. With ``T`` the padded tokens of the largest batch (rows x columns), ``R`` the
largest rows x columns^2 of any batch, ``b`` bytes per element of the compute dtype, ``H`` hidden size,
``I`` intermediate size, ``n_q`` / ``n_kv`` / ``d`` attention heads, KV heads and head size, ``E`` experts
with ``k`` routed per token, ``I_e`` / ``I_s`` expert and shared-expert intermediate sizes, ``C`` the
widest hooked site:

* residual stream: ``3 T H b + 2 T H 4`` (hidden state, residual, normed input; float32 norm upcast);
* attention: ``2 T (n_q + 2 n_kv) d b + 2 T n_q d b + T H b`` (q, k, v and their rotated copies,
  the attention output, o_proj), plus ``R b`` for the 4-D mask; eager attention adds the score
  matrices ``R n_q (2 b + 4)`` (scores, float32 softmax, probabilities). SDPA / flash kernels do not
  materialise them;
* MLP: dense ``4 T I b`` (gate, up, act(gate), product); MoE ``T k (3 I_e + 2 H) b + 2 T E 4 +
  4 T I_s b + T H 4`` (routed copies, float32 router logits and softmax, shared expert, float32
  accumulator); a layer counts the larger of the two;
* one decoder layer's intermediates are live at a time (``inference_mode`` frees them), but attention
  and MLP are counted together, never the larger of the two;
* statistics update: ``T C w`` with ``w`` = 40 bytes per element for the float64 reference kernels,
  16 for the Triton kernels; the position-0 staging buffers, and on CUDA the OOM guard's copy of
  every state tensor.

The forward part (activations + statistics update) is multiplied by :data:`MARGIN`. The vocabulary
does not enter: the scan runs the base model, no lm_head. Everything is linear in ``T`` for a given
sequence length, which is how a ``--tokens-per-batch`` that fits is found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

#: Factor on the forward's estimated activations and statistics workspace (allocator fragmentation,
#: kernels' own scratch, tensors the formula does not name).
MARGIN = 1.25
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
#: Bytes of temporaries per hooked element in one statistics update.
WORKSPACE_REFERENCE = 40   # float32 bits + float64 copy, its square and abs, masks
WORKSPACE_TRITON = 16


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder that the activation estimate needs (from its config)."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    shared_intermediate: int = 0

    @classmethod
    def from_config(cls, config: Any) -> "ModelShape":
        """Read a transformers config (multimodal ones through their text config)."""
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config

        def get(*names: str, default: int = 0) -> int:
            for name in names:
                v = getattr(cfg, name, None)
                if isinstance(v, int) and v > 0:
                    return v
            return default

        hidden = get("hidden_size", "n_embd", "d_model")
        heads = get("num_attention_heads", "n_head", default=1)
        head_dim = max(get("head_dim", default=hidden // heads),
                       get("qk_nope_head_dim") + get("qk_rope_head_dim"), get("v_head_dim"))
        experts = get("num_experts", "num_local_experts", "n_routed_experts")
        intermediate = get("intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)
        expert_i = get("moe_intermediate_size", default=intermediate) if experts else 0
        shared = get("shared_expert_intermediate_size")
        if not shared and experts:
            shared = get("n_shared_experts", "num_shared_experts") * expert_i
        per_token = get("num_experts_per_tok", "moe_topk", "top_k") if experts else 0
        return cls(hidden=hidden, intermediate=intermediate, heads=heads,
                   kv_heads=get("num_key_value_heads", default=heads), head_dim=head_dim,
                   experts=experts, experts_per_token=per_token,
                   expert_intermediate=expert_i, shared_intermediate=shared)


def activation_bytes(shape: ModelShape, tokens: int, attention_elems: int, dtype_bytes: int, *,
                     eager: bool) -> int:
    """Peak bytes the forward of one batch adds (module docstring), before the margin."""
    t, h, b = int(tokens), shape.hidden, dtype_bytes
    residual = 3 * t * h * b + 2 * t * h * 4
    qkv = t * (shape.heads + 2 * shape.kv_heads) * shape.head_dim * b
    attn = 2 * qkv + 2 * t * shape.heads * shape.head_dim * b + t * h * b + attention_elems * b
    if eager:
        attn += attention_elems * shape.heads * (2 * b + 4)
    mlp = 4 * t * shape.intermediate * b
    if shape.experts:
        moe = (t * shape.experts_per_token * (3 * shape.expert_intermediate + 2 * h) * b
               + 2 * t * shape.experts * 4 + 4 * t * shape.shared_intermediate * b + t * h * 4)
        mlp = max(mlp, moe)
    return residual + attn + mlp


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of the scan's peak memory on its device."""

    parameters: int     # measured: parameters and buffers of the model
    states: int         # measured: statistics states already allocated
    staging: int        # position-0 staging buffers (allocated during the first batch)
    guard: int          # the OOM guard's copy of the states (CUDA only)
    activations: int    # estimated: forward of the largest batch, margin included
    workspace: int      # estimated: statistics update temporaries, margin included

    @property
    def total(self) -> int:
        return self.parameters + self.states + self.pending

    @property
    def pending(self) -> int:
        """What still has to fit once the model and the states are in memory."""
        return self.staging + self.guard + self.activations + self.workspace

    def as_dict(self) -> dict[str, int]:
        return dict(asdict(self), total=self.total, pending=self.pending)

    def text(self) -> str:
        return (f"{gib(self.total)} (parameters {gib(self.parameters)}, statistics "
                f"{gib(self.states + self.staging + self.guard)}, activations of the largest batch "
                f"{gib(self.activations + self.workspace)})")


def gib(n: float) -> str:
    """Bytes as a short human figure."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class Estimator:
    """The estimate as a function of the batch shape (everything else fixed)."""

    shape: ModelShape
    dtype_bytes: int
    eager: bool
    max_channels: int
    workspace_per_element: int
    parameters: int
    states: int
    staging: int
    guard: int

    def estimate(self, tokens: int, attention_elems: int) -> MemoryEstimate:
        act = activation_bytes(self.shape, tokens, attention_elems, self.dtype_bytes, eager=self.eager)
        work = int(tokens) * self.max_channels * self.workspace_per_element
        return MemoryEstimate(parameters=self.parameters, states=self.states, staging=self.staging,
                              guard=self.guard, activations=int(MARGIN * act), workspace=int(MARGIN * work))

    def pending(self, tokens: int, attention_elems: int) -> int:
        return self.estimate(tokens, attention_elems).pending


def _largest(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
    """Largest n in [lo, hi] with fits(n) (fits monotone decreasing in n); None if none."""
    if hi < lo or not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def fitting_budget(est: Estimator, free: int, seq_len: int, current: int) -> int | None:
    """Largest ``--tokens-per-batch`` (below ``current``) whose batches fit in ``free`` bytes.

    A batch of budget t holds at most t tokens in rows of at most ``seq_len`` columns, so its
    rows x columns^2 is at most t x seq_len. None when one row of ``seq_len`` tokens already does not fit.
    """
    seq_len = max(1, int(seq_len))
    t = _largest(seq_len, max(seq_len, int(current) - 1), lambda n: est.pending(n, n * seq_len) <= free)
    if t is None:
        return None
    rounded = t - t % 256 if t >= 1024 else t
    return rounded if rounded >= seq_len else t


def fitting_seq_len(est: Estimator, free: int, seq_len: int) -> int | None:
    """Largest sequence length below ``seq_len`` whose single row fits; None if not even one token."""
    return _largest(1, max(1, int(seq_len) - 1), lambda s: est.pending(s, s * s) <= free)


def free_memory(device: torch.device) -> int | None:
    """Free bytes where the scan runs: CUDA free memory, or available RAM on the CPU; None if unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def module_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers (shared tensors once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type == "meta" or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def state_bytes(states: dict[str, Any]) -> int:
    """Bytes of every SiteState's persistent statistics tensors (main and position-0 states)."""
    return sum(t.numel() * t.element_size() for st in states.values() for t in st.live()[0])


def staging_bytes(states: dict[str, Any], capacity: int, dtype_bytes: int) -> int:
    """Position-0 staging buffers: ``capacity`` rows per split site, plus sample ids and zeros."""
    return sum(capacity * (st.spec.num_channels * dtype_bytes + 16)
               for st in states.values() if st.first is not None)


def workspace_per_element(backend: str, device: torch.device) -> int:
    """Statistics-update temporaries per hooked element for the kernels the scan will use."""
    if backend == "reference" or (backend == "auto" and device.type != "cuda"):
        return WORKSPACE_REFERENCE
    return WORKSPACE_TRITON
