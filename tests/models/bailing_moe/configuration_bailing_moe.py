"""Test fixture: configuration of a tiny imitation of the remote-code BailingMoe (Ling) model.

Only the fields the imitation's module structure needs; names follow the published
``configuration_bailing_moe.py`` of inclusionAI/Ling.
"""

from transformers import PretrainedConfig


class BailingMoeConfig(PretrainedConfig):
    model_type = "bailing_moe"

    def __init__(
        self,
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_experts=4,
        num_shared_experts=1,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        first_k_dense_replace=1,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        pad_token_id=0,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.moe_intermediate_size = moe_intermediate_size
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.norm_topk_prob = norm_topk_prob
        self.first_k_dense_replace = first_k_dense_replace
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.rms_norm_eps = rms_norm_eps
        self.hidden_act = hidden_act
        super().__init__(pad_token_id=pad_token_id, **kwargs)
