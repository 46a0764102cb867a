"""The architecture registry: DESIGN.md's real configs and the tiny test models."""

import pytest
import torch
from transformers import CONFIG_MAPPING, AutoModel

from maxact.architectures import ARCHITECTURES, build_config, get_architecture, is_available, tiny_names

# DESIGN.md "Architectures": layers, hidden, intermediate (MoE: per expert), heads, kv heads, vocab
DESIGN_TABLE = {
    "qwen2.5-1.5b": ("qwen2", 28, 1536, 8960, 12, 2, 151936),
    "qwen2.5-7b": ("qwen2", 28, 3584, 18944, 28, 4, 152064),
    "qwen3-8b": ("qwen3", 36, 4096, 12288, 32, 8, 151936),
    "qwen3-30b-a3b": ("qwen3_moe", 48, 2048, 768, 32, 4, 151936),
    "gemma-3-4b": ("gemma3_text", 34, 2560, 10240, 8, 4, 262208),
    "gemma-3-270m": ("gemma3_text", 18, 640, 2048, 4, 1, 262144),
}

# Published parameter counts (model cards): base model without lm_head, and its non-embedding part.
PUBLISHED_NON_EMBEDDING = {
    "qwen2.5-1.5b": 1.31e9,
    "qwen2.5-7b": 6.53e9,
    "qwen3-8b": 6.95e9,
    "qwen3-30b-a3b": 29.9e9,
    "gemma-3-270m": 100e6,  # "170M embedding + 100M transformer blocks"
}


@pytest.mark.parametrize("name", list(DESIGN_TABLE))
def test_full_size_configs_match_design_table(name):
    model_type, layers, hidden, intermediate, heads, kv, vocab = DESIGN_TABLE[name]
    cfg = build_config(name)
    assert cfg.model_type == model_type
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.vocab_size) == (layers, hidden, heads, kv, vocab)
    per_expert = getattr(cfg, "moe_intermediate_size", None) if model_type == "qwen3_moe" else None
    assert (per_expert or cfg.intermediate_size) == intermediate
    if name in ("qwen3-8b", "qwen3-30b-a3b"):
        assert cfg.head_dim == 128
    if name.startswith("gemma"):
        assert cfg.head_dim == 256
    if name == "qwen3-30b-a3b":
        assert (cfg.num_experts, cfg.num_experts_per_tok) == (128, 8)


@pytest.mark.parametrize("name", list(PUBLISHED_NON_EMBEDDING))
def test_full_size_parameter_counts_match_published(name):
    # meta device: shapes only, no memory
    with torch.device("meta"):
        model = AutoModel.from_config(build_config(name))
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    assert abs((total - embedding) / PUBLISHED_NON_EMBEDDING[name] - 1) < 0.01


def test_tiny_architectures_cover_the_requested_model_types():
    wanted = {"llama", "mistral", "qwen2", "qwen2_5_vl", "qwen3", "qwen3_moe", "qwen3_5", "qwen3_5_moe",
              "qwen3_next", "gemma2", "gemma3_text", "gemma3", "gpt_oss"}
    provided = {ARCHITECTURES[name].model_type for name in tiny_names()}
    assert {t for t in wanted if t in CONFIG_MAPPING} <= provided


@pytest.mark.parametrize("name", tiny_names())
def test_tiny_models_are_tiny(name):
    cfg = build_config(name)
    text = getattr(cfg, "text_config", None) or cfg
    assert text.num_hidden_layers == 2 and text.hidden_size == 64 and text.vocab_size <= 256
    model = AutoModel.from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_overrides_and_unknown_names():
    assert build_config("tiny-qwen3", num_hidden_layers=3).num_hidden_layers == 3
    assert get_architecture("qwen3-8b").checkpoint == "Qwen/Qwen3-8B"
    assert is_available("tiny-llama")
    with pytest.raises(KeyError, match="unknown architecture"):
        get_architecture("qwen9-1t")
