"""Helpers shared by the model / discovery / hook tests: tiny models, padded batches, recorders."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

BAILING_FIXTURE = Path(__file__).parent / "bailing_moe"


@dataclass
class PaddedBatch:
    """The parts of maxact.batching.Batch the hook layer uses (CONTRACTS.md section 3)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    sample_ids: torch.Tensor

    def row_mask(self) -> torch.Tensor:
        return self.attention_mask.reshape(-1).bool()

    def row_sample_ids(self) -> torch.Tensor:
        return self.sample_ids[:, None].expand_as(self.input_ids).reshape(-1)

    def row_positions(self) -> torch.Tensor:
        return torch.arange(self.input_ids.shape[1]).expand_as(self.input_ids).reshape(-1)


def padded_batch(lengths: list[int], vocab: int, *, sample_ids: list[int] | None = None, seed: int = 0) -> PaddedBatch:
    """Right-padded random token ids (ids 3..vocab-1; 0 = padding) with the given real lengths."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), width), generator=gen)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask
    sids = torch.tensor(sample_ids if sample_ids is not None else list(range(len(lengths))))
    return PaddedBatch(ids, mask, sids)


class Recorder:
    """A stand-in for ActivationStats: keeps copies of what update() receives."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]] = []

    def update(self, x, mask=None, sample_ids=None, positions=None):
        copy = (lambda t: None if t is None else t.detach().clone())
        self.calls.append((copy(x), copy(mask), copy(sample_ids), copy(positions)))


def first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def capture_outputs(model: nn.Module, names: list[str], *, inputs: bool = False) -> tuple[dict, list]:
    """Plain forward hooks (independent of maxact.hooks) storing each module's raw output or inputs."""
    store: dict[str, list] = {name: [] for name in names}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        if inputs:
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, kwargs, name=name: store[name].append((args, kwargs)), with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(
                lambda _m, _args, out, name=name: store[name].append(out)))
    return store, handles


def tiny_causal_lm(model_type: str = "qwen3", **overrides):
    """A tiny *ForCausalLM built from a config (random weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=256, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2, tie_word_embeddings=False)
    kwargs.update(overrides)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kwargs))


def tiny_tokenizer(vocab: int = 256):
    """A word-level fast tokenizer built offline (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(vocab - 4)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def write_bailing_checkpoint(directory: Path, **config_overrides) -> Path:
    """A local remote-code checkpoint of the BailingMoe imitation (config + modeling files + weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    for name in ("configuration_bailing_moe.py", "modeling_bailing_moe.py"):
        shutil.copy(BAILING_FIXTURE / name, directory / name)
    config = {
        "model_type": "bailing_moe",
        "architectures": ["BailingMoeForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_bailing_moe.BailingMoeConfig",
            "AutoModelForCausalLM": "modeling_bailing_moe.BailingMoeForCausalLM",
        },
        **config_overrides,
    }
    (directory / "config.json").write_text(json.dumps(config))
    cfg = AutoConfig.from_pretrained(directory, trust_remote_code=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)
    model.save_pretrained(directory)
    # save_pretrained rewrites config.json; keep the auto_map that makes it remote code
    saved = json.loads((directory / "config.json").read_text())
    saved["auto_map"] = config["auto_map"]
    (directory / "config.json").write_text(json.dumps(saved))
    return directory
