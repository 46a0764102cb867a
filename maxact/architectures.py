"""Model architectures for random-initialised models (``--model random:<name>``).

The full-size entries carry the real configurations of DESIGN.md's architecture table (benchmarks
run random-initialised weights with exactly these shapes); the ``tiny-*`` entries keep each model
type's module structure at 2 layers and hidden size 64 so tests run in seconds on a CPU.
Only configurations live here: :func:`maxact.models.load_model` instantiates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Architecture", "ARCHITECTURES", "get_architecture", "build_config", "is_available", "tiny_names"]


@dataclass(frozen=True)
class Architecture:
    """A named model configuration: ``AutoConfig.for_model(model_type, **config)``."""

    name: str
    model_type: str
    config: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # the public checkpoint whose shapes these are, when any

    @property
    def tiny(self) -> bool:
        return self.name.startswith("tiny-")


_QWEN_TOKENS = {"bos_token_id": 151643, "eos_token_id": 151645}


def _rope(theta: float) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": theta}


def _gemma3_rope(full_theta: float, local_theta: float, linear_factor: float | None = None) -> dict[str, Any]:
    full = _rope(full_theta) if linear_factor is None else {
        "rope_type": "linear", "factor": linear_factor, "rope_theta": full_theta,
    }
    return {"full_attention": full, "sliding_attention": _rope(local_theta)}


def _gemma3_layer_types(num_layers: int, pattern: int = 6) -> list[str]:
    # Every sixth layer attends globally, the rest use the sliding window (Gemma 3).
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)]


_FULL_SIZE = [
    Architecture("qwen2.5-1.5b", "qwen2", checkpoint="Qwen/Qwen2.5-1.5B", config=dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072,
        rms_norm_eps=1e-6, rope_parameters=_rope(1_000_000.0), tie_word_embeddings=True,
        use_sliding_window=False, sliding_window=131072, max_window_layers=28, hidden_act="silu",
        bos_token_id=151643, eos_token_id=151643,
    )),
    Architecture("qwen2.5-7b", "qwen2", checkpoint="Qwen/Qwen2.5-7B", config=dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072,
        rms_norm_eps=1e-6, rope_parameters=_rope(1_000_000.0), tie_word_embeddings=False,
        use_sliding_window=False, sliding_window=131072, max_window_layers=28, hidden_act="silu",
        bos_token_id=151643, eos_token_id=151643,
    )),
    # Larger than one 80 GB GPU (about 145 GB in bf16): scanned with --device-map auto.
    Architecture("qwen2.5-72b", "qwen2", checkpoint="Qwen/Qwen2.5-72B", config=dict(
        vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=131072,
        rms_norm_eps=1e-6, rope_parameters=_rope(1_000_000.0), tie_word_embeddings=False,
        use_sliding_window=False, sliding_window=131072, max_window_layers=80, hidden_act="silu",
        bos_token_id=151643, eos_token_id=151643,
    )),
    Architecture("qwen3-8b", "qwen3", checkpoint="Qwen/Qwen3-8B", config=dict(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_parameters=_rope(1_000_000.0), tie_word_embeddings=False,
        attention_bias=False, use_sliding_window=False, max_window_layers=36, hidden_act="silu",
        **_QWEN_TOKENS,
    )),
    Architecture("qwen3-30b-a3b", "qwen3_moe", checkpoint="Qwen/Qwen3-30B-A3B", config=dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
        num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
        head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
        rope_parameters=_rope(1_000_000.0), tie_word_embeddings=False, attention_bias=False,
        use_sliding_window=False, max_window_layers=48, hidden_act="silu", **_QWEN_TOKENS,
    )),
    Architecture("gemma-3-4b", "gemma3_text", checkpoint="google/gemma-3-4b-pt (text backbone)", config=dict(
        vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=1024, layer_types=_gemma3_layer_types(34), max_position_embeddings=131072,
        rope_parameters=_gemma3_rope(1_000_000.0, 10_000.0, linear_factor=8.0), rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )),
    # These values are the ones the demo GGUF (gemma-3-270m Q4_K_M) carries in its metadata.
    Architecture("gemma-3-270m", "gemma3_text", checkpoint="google/gemma-3-270m", config=dict(
        vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=512, layer_types=_gemma3_layer_types(18), max_position_embeddings=32768,
        rope_parameters=_gemma3_rope(1_000_000.0, 10_000.0), rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )),
]

# Shared tiny shape: 2 layers, hidden 64, 4 heads of 16 (2 KV heads), vocab 256, token ids in range.
_TINY_TEXT = dict(
    num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=512,
    pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
)
_TINY_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
# Linear-attention (gated delta net) layers kept small; layer 0 linear, layer 1 full attention.
_TINY_LINEAR_ATTN = dict(
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
    linear_conv_kernel_dim=4, layer_types=["linear_attention", "full_attention"],
)
_TINY_VISION_QWEN = dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=64,
                         patch_size=14, temporal_patch_size=2, spatial_merge_size=2)
_TINY_VISION_SIGLIP = dict(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14)

_TINY = [
    Architecture("tiny-llama", "llama", config=dict(_TINY_TEXT)),
    Architecture("tiny-mistral", "mistral", config=dict(_TINY_TEXT, sliding_window=None)),
    Architecture("tiny-qwen2", "qwen2", config=dict(_TINY_TEXT, use_sliding_window=False)),
    Architecture("tiny-qwen2.5-vl", "qwen2_5_vl", config=dict(
        text_config=dict(_TINY_TEXT, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "mrope_section": [2, 3, 3]}),
        vision_config=dict(_TINY_VISION_QWEN),
    )),
    Architecture("tiny-qwen3", "qwen3", config=dict(_TINY_TEXT, use_sliding_window=False)),
    Architecture("tiny-qwen3-moe", "qwen3_moe", config=dict(_TINY_TEXT, **_TINY_MOE, use_sliding_window=False)),
    # decoder_sparse_step=2: layer 0 dense, layer 1 MoE, as in checkpoints mixing both.
    Architecture("tiny-qwen3-moe-mixed", "qwen3_moe", config=dict(
        _TINY_TEXT, **_TINY_MOE, decoder_sparse_step=2, use_sliding_window=False)),
    Architecture("tiny-qwen3-next", "qwen3_next", config=dict(
        _TINY_TEXT, **_TINY_MOE, **_TINY_LINEAR_ATTN, shared_expert_intermediate_size=48)),
    Architecture("tiny-qwen3.5", "qwen3_5", config=dict(
        text_config=dict(_TINY_TEXT, **_TINY_LINEAR_ATTN), vision_config=dict(_TINY_VISION_QWEN))),
    Architecture("tiny-qwen3.5-moe", "qwen3_5_moe", config=dict(
        text_config=dict(_TINY_TEXT, **_TINY_MOE, **_TINY_LINEAR_ATTN, shared_expert_intermediate_size=48),
        vision_config=dict(_TINY_VISION_QWEN))),
    Architecture("tiny-gemma2", "gemma2", config=dict(_TINY_TEXT, query_pre_attn_scalar=16, sliding_window=8)),
    Architecture("tiny-gemma3", "gemma3_text", config=dict(
        _TINY_TEXT, query_pre_attn_scalar=16, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"])),
    Architecture("tiny-gemma3-mm", "gemma3", config=dict(
        text_config=dict(_TINY_TEXT, query_pre_attn_scalar=16, sliding_window=8,
                         layer_types=["sliding_attention", "full_attention"]),
        vision_config=dict(_TINY_VISION_SIGLIP), mm_tokens_per_image=4,
        boi_token_index=250, eoi_token_index=251, image_token_index=252)),
    Architecture("tiny-gpt-oss", "gpt_oss", config=dict(
        _TINY_TEXT, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    Architecture("tiny-bailing-hybrid", "bailing_hybrid", config=dict(
        # multi-latent attention expands keys to every head: as many KV heads as query heads
        _TINY_TEXT, num_key_value_heads=4, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        n_group=2, topk_group=1, first_k_dense_replace=1, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
        v_head_dim=16, layer_types=["linear_attention", "full_attention"], num_mtp_layers=0)),
]

ARCHITECTURES: dict[str, Architecture] = {arch.name: arch for arch in _FULL_SIZE + _TINY}


def get_architecture(name: str) -> Architecture:
    """Look an architecture up by name (``qwen3-8b``, ``tiny-qwen3``, ...)."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def is_available(name: str) -> bool:
    """True when the installed transformers knows this architecture's model type."""
    from transformers import CONFIG_MAPPING

    return get_architecture(name).model_type in CONFIG_MAPPING


def tiny_names() -> list[str]:
    """Names of the tiny test architectures whose model type the installed transformers provides."""
    return [name for name, arch in ARCHITECTURES.items() if arch.tiny and is_available(name)]


def build_config(name: str, **overrides: Any):
    """The ``transformers`` config of an architecture, with ``overrides`` applied on top."""
    from transformers import AutoConfig

    arch = get_architecture(name)
    if not is_available(name):
        import transformers

        raise ValueError(
            f"architecture {name!r} needs model type {arch.model_type!r}, which transformers "
            f"{transformers.__version__} does not provide"
        )
    return AutoConfig.for_model(arch.model_type, **{**arch.config, **overrides})
