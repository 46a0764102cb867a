"""Test fixture: a tiny imitation of the remote-code BailingMoe (Ling) model's module structure.

The Ling checkpoints ship ``modeling_bailing_moe.py`` as remote code, which tests cannot download.
This file reproduces the structure that site discovery sees, with the attribute names and output
conventions of the published file: ``model.word_embeddings``, ``model.layers[i].attention``
(``query_key_value``, ``dense``), ``model.layers[i].mlp`` (a dense ``BailingMoeMLP`` for the first
``first_k_dense_replace`` layers, else ``BailingMoeSparseMoeBlock`` with ``gate``, an ``nn.ModuleList`` of
``experts`` and ``shared_experts``), ``model.norm``; decoder layers return tuples, the gate returns
``(topk_idx, topk_weight, logits)`` and the MoE block ``(y, (router_logits, topk_idx))``.
The numerics are simplified (no rotary embedding); they only need to be a deterministic forward.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_bailing_moe import BailingMoeConfig


class BailingMoeRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


class BailingMoeMLP(nn.Module):
    def __init__(self, config, intermediate_size):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BailingMoeGate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))

    def forward(self, hidden_states):
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        logits = F.linear(hidden_states, self.weight)
        scores = logits.softmax(dim=-1, dtype=torch.float32)
        topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1)
        if self.norm_topk_prob:
            topk_weight = topk_weight / topk_weight.sum(dim=-1, keepdim=True)
        return topk_idx, topk_weight, logits


class BailingMoeSparseMoeBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.experts = nn.ModuleList(
            [BailingMoeMLP(config, config.moe_intermediate_size) for _ in range(config.num_experts)]
        )
        self.gate = BailingMoeGate(config)
        self.shared_experts = BailingMoeMLP(config, config.moe_intermediate_size * config.num_shared_experts)

    def forward(self, hidden_states):
        bsz, seq_len, hidden = hidden_states.shape
        topk_idx, topk_weight, router_logits = self.gate(hidden_states)
        flat = hidden_states.view(-1, hidden)
        y = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(topk_idx == e)
            if token.numel():
                y.index_add_(0, token, expert(flat[token]) * topk_weight[token, slot, None].to(flat.dtype))
        y = y.view(bsz, seq_len, hidden) + self.shared_experts(hidden_states)
        return y, (router_logits.view(bsz, seq_len, -1), topk_idx.view(bsz, seq_len, -1))


class BailingMoeAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.query_key_value = nn.Linear(
            config.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim, bias=False
        )
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        bsz, q_len, _ = hidden_states.shape
        qkv = self.query_key_value(hidden_states).view(bsz, q_len, -1, self.head_dim)
        q, k, v = qkv.split([self.num_heads, self.num_key_value_heads, self.num_key_value_heads], dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        repeat = self.num_heads // self.num_key_value_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        return self.dense(out.transpose(1, 2).reshape(bsz, q_len, -1)), None, None


class BailingMoeDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attention = BailingMoeAttention(config, layer_idx)
        self.mlp = (
            BailingMoeSparseMoeBlock(config)
            if layer_idx >= config.first_k_dense_replace
            else BailingMoeMLP(config, config.intermediate_size)
        )
        self.input_layernorm = BailingMoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = BailingMoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        residual = hidden_states
        hidden_states, _, _ = self.attention(self.input_layernorm(hidden_states), attention_mask=attention_mask)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        if isinstance(hidden_states, tuple):
            hidden_states, _router = hidden_states
        return (residual + hidden_states,)


class BailingMoePreTrainedModel(PreTrainedModel):
    config_class = BailingMoeConfig
    base_model_prefix = "model"
    _no_split_modules = ["BailingMoeDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, BailingMoeGate)):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, BailingMoeRMSNorm):
            nn.init.ones_(module.weight)


class BailingMoeModel(BailingMoePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([BailingMoeDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = BailingMoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, value):
        self.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, use_cache=None, output_hidden_states=None, **kwargs):
        hidden_states = self.word_embeddings(input_ids)
        seq_len = input_ids.shape[1]
        mask = torch.ones(seq_len, seq_len, dtype=torch.bool, device=input_ids.device).tril()[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask)[0]
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states))


class BailingMoeForCausalLM(BailingMoePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = BailingMoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden_states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return CausalLMOutputWithPast(logits=self.lm_head(hidden_states))
