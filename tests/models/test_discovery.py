"""Site discovery by structure on tiny random models of every supported model type."""

import copy
import logging

import pytest
import torch
from torch import nn

from maxact.architectures import build_config, tiny_names
from maxact.discovery import SiteDiscoveryError, find_sites, map_model
from maxact.hooks import BatchContext, attach, run_forward
from maxact.models import load_model
from maxact.sites import RESIDUAL_COMPONENTS

from model_fixtures import Recorder, padded_batch, tiny_causal_lm, write_bailing_checkpoint

# Per tiny architecture, for layers 0 and 1: attention child, gate path inside the layer, router path.
_DENSE = (("self_attn", "self_attn"), ("mlp.gate_proj", "mlp.gate_proj"), (None, None))
EXPECTED = {
    "tiny-llama": _DENSE,
    "tiny-mistral": _DENSE,
    "tiny-qwen2": _DENSE,
    "tiny-qwen2.5-vl": _DENSE,
    "tiny-qwen3": _DENSE,
    "tiny-gemma2": _DENSE,
    "tiny-gemma3": _DENSE,
    "tiny-gemma3-mm": _DENSE,
    # MoE without shared expert: router only, no gate site
    "tiny-qwen3-moe": (("self_attn", "self_attn"), (None, None), ("mlp.gate", "mlp.gate")),
    "tiny-qwen3-moe-mixed": (("self_attn", "self_attn"), ("mlp.gate_proj", None), (None, "mlp.gate")),
    # hybrid linear attention; MoE with a shared expert whose gate is the gate site
    "tiny-qwen3-next": (("linear_attn", "self_attn"), ("mlp.shared_expert.gate_proj",) * 2, ("mlp.gate",) * 2),
    "tiny-qwen3.5": (("linear_attn", "self_attn"), ("mlp.gate_proj",) * 2, (None, None)),
    "tiny-qwen3.5-moe": (("linear_attn", "self_attn"), ("mlp.shared_expert.gate_proj",) * 2, ("mlp.gate",) * 2),
    "tiny-gpt-oss": (("self_attn", "self_attn"), (None, None), ("mlp.router", "mlp.router")),
    "tiny-bailing-hybrid": (("self_attn", "self_attn"), ("mlp.gate_proj", "mlp.shared_experts.gate_proj"),
                            (None, "mlp.gate")),
}


def _load(name):
    return load_model(f"random:{name}", dtype="float32", device="cpu").model


def _expected_sites(name, hidden=64, experts=4):
    attn, gate, router = EXPECTED[name]
    expected = [("embedding", "embed_tokens", hidden)]
    for i in range(2):
        expected.append((f"layers.{i}.attn", f"layers.{i}.{attn[i]}", hidden))
        if router[i]:
            expected.append((f"layers.{i}.router", f"layers.{i}.{router[i]}", experts))
        if gate[i]:
            expected.append((f"layers.{i}.gate", f"layers.{i}.{gate[i]}", None))
        expected.append((f"layers.{i}.mlp", f"layers.{i}.mlp", hidden))
        expected.append((f"layers.{i}.hidden", f"layers.{i}", hidden))
    expected.append(("final_norm", "norm", hidden))
    return expected


def test_every_tiny_architecture_has_expectations():
    assert set(tiny_names()) <= set(EXPECTED)


@pytest.mark.parametrize("name", tiny_names())
def test_paper_sites_by_structure(name):
    model = _load(name)
    sites = find_sites(model, "paper")
    expected = _expected_sites(name)
    assert [(s.name, s.module_name) for s in sites] == [(n, m) for n, m, _ in expected]
    for site, (_, _, channels) in zip(sites, expected):
        module = model.get_submodule(site.module_name)
        if site.component == "gate":
            assert isinstance(module, nn.Linear) and site.num_channels == module.out_features
        else:
            assert site.num_channels == channels
        assert site.track_tokens == (site.component in RESIDUAL_COMPONENTS)
        assert site.capture == "output" and site.part is None and site.expert is None


@pytest.mark.parametrize("name", tiny_names())
def test_paper_sites_fire_once_with_batch_rows(name):
    model = _load(name)
    sites = find_sites(model, "paper")
    batch = padded_batch([5, 3], vocab=200)
    ctx = BatchContext()
    ctx.set_batch(batch, "cpu")
    states = {s.name: Recorder() for s in sites}
    with attach(model, sites, states, ctx) as handle:
        run_forward(model, batch)
    assert handle.missing() == []
    for site in sites:
        (x, mask, sample_ids, positions), = states[site.name].calls
        assert x.shape == (10, site.num_channels), site.name  # every paper site sees all B*T rows
        assert torch.equal(mask, batch.row_mask()) and torch.equal(positions, batch.row_positions())
        assert torch.equal(sample_ids, batch.row_sample_ids())
        assert torch.isfinite(x).all()


def test_linear_inputs_cover_every_linear_of_the_backbone():
    model = _load("tiny-qwen3")
    sites = find_sites(model, "linear-inputs")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert [s.name for s in sites] == [f"{n}.input" for n in linears]
    for site in sites:
        assert site.component == "linear_input" and site.capture == "input" and not site.track_tokens
        assert site.num_channels == linears[site.module_name].in_features
        assert site.layer == int(site.module_name.split(".")[1])


def test_all_is_paper_plus_linear_inputs():
    model = _load("tiny-qwen3-moe")
    names = [s.name for s in find_sites(model, "all")]
    assert names == [s.name for s in find_sites(model, "paper")] + [s.name for s in find_sites(model, "linear-inputs")]


@pytest.mark.parametrize("per_expert", [True, False])
def test_fused_experts_get_input_sites(per_expert):
    model = _load("tiny-qwen3-moe")
    sites = [s for s in find_sites(model, "linear-inputs", per_expert=per_expert) if "experts" in s.name]
    layer0 = [s for s in sites if s.layer == 0]
    expected = ["layers.0.mlp.experts.gate_up_proj.input"]
    if per_expert:
        expected += [f"layers.0.mlp.experts.{e}.gate_up_proj.input" for e in range(4)]
    assert [s.name for s in layer0] == expected
    for site in layer0:
        assert site.module_name == "layers.0.mlp.experts" and site.capture == "input" and site.num_channels == 64
    assert [s.expert for s in layer0] == [None] + ([0, 1, 2, 3] if per_expert else [])


def test_causal_lm_wrapper_maps_to_its_base_model_and_skips_lm_head():
    model = tiny_causal_lm("qwen3")
    mapped = map_model(model)
    assert mapped.layers_path == "model.layers" and mapped.embedding == "model.embed_tokens"
    assert mapped.final_norm == "model.norm"
    names = [s.name for s in find_sites(model, "linear-inputs")]
    assert names and all(n.startswith("model.layers.") for n in names)


@pytest.mark.parametrize("name, text_path", [("tiny-gemma3-mm", "language_model"),
                                             ("tiny-qwen2.5-vl", "language_model")])
def test_multimodal_wrapper_picks_the_text_layers_over_a_deeper_vision_tower(name, text_path):
    from transformers import AutoModel

    config = build_config(name)
    vision = config.vision_config
    # a vision tower with more blocks than the text model must still lose to the text layers
    for key in ("num_hidden_layers", "depth"):
        if hasattr(vision, key):
            setattr(vision, key, 3)
    if hasattr(vision, "fullatt_block_indexes"):
        vision.fullatt_block_indexes = [2]
    model = AutoModel.from_config(config)
    vision_lists = [m for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == 3]
    assert vision_lists, "the test needs a 3-block vision tower"
    mapped = map_model(model)
    assert mapped.layers_path == f"{text_path}.layers" and len(mapped.layers) == 2
    assert mapped.embedding == f"{text_path}.embed_tokens" and mapped.final_norm == f"{text_path}.norm"
    linear = find_sites(model, "linear-inputs")
    assert all(s.module_name.startswith(f"{text_path}.layers.") for s in linear)


def test_bailing_moe_remote_code_imitation(tmp_path):
    from transformers import AutoModelForCausalLM

    directory = write_bailing_checkpoint(tmp_path / "ling-tiny")
    base = load_model(str(directory), trust_remote_code=True, tokenizer=False, device="cpu", dtype="float32").model
    mapped = map_model(base)
    assert (mapped.embedding, mapped.layers_path, mapped.final_norm) == ("word_embeddings", "layers", "norm")
    assert [layer.attn for layer in mapped.layers] == ["layers.0.attention", "layers.1.attention"]
    assert [layer.router for layer in mapped.layers] == [None, "layers.1.mlp.gate"]
    assert [layer.gate for layer in mapped.layers] == [
        "layers.0.mlp.gate_proj", "layers.1.mlp.shared_experts.gate_proj"]
    assert (mapped.layers[1].experts, mapped.layers[1].experts_fused, mapped.layers[1].num_experts) == (
        "layers.1.mlp.experts", False, 4)
    # the *ForCausalLM wrapper maps onto the same modules under "model."
    full = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
    assert [s.module_name for s in find_sites(full)] == [f"model.{s.module_name}" for s in find_sites(base)]
    # nn.ModuleList experts: one linear-input site per expert Linear
    names = {s.name for s in find_sites(base, "linear-inputs")}
    projections = ("gate_proj", "up_proj", "down_proj")
    assert {f"layers.1.mlp.experts.{e}.{p}.input" for e in range(4) for p in projections} <= names


def test_trailing_layers_beyond_num_hidden_layers_are_ignored():
    model = _load("tiny-qwen3")
    model.layers.append(copy.deepcopy(model.layers[1]))  # e.g. a multi-token-prediction layer
    assert len(map_model(model).layers) == 2


def test_gemma_embedding_scaled_inside_module_is_hooked_at_its_output():
    model = _load("tiny-gemma3")
    mapped = map_model(model)
    assert hasattr(model.embed_tokens, "embed_scale")
    assert (mapped.embedding, mapped.embedding_capture) == ("embed_tokens", "output")


def test_gemma_embedding_scaled_outside_is_hooked_at_first_layer_input():
    # Older transformers multiplied by sqrt(hidden) in the model forward, after a plain nn.Embedding.
    model = _load("tiny-gemma3")
    plain = nn.Embedding(model.embed_tokens.num_embeddings, 64)
    plain.weight.data.copy_(model.embed_tokens.weight.data)
    model.embed_tokens = plain
    (embedding,) = [s for s in find_sites(model) if s.name == "embedding"]
    assert (embedding.module_name, embedding.capture, embedding.num_channels) == ("layers.0", "input", 64)


def test_missing_final_norm_drops_the_site_with_a_warning(caplog):
    model = _load("tiny-llama")
    del model.norm
    with caplog.at_level(logging.WARNING, logger="maxact.discovery"):
        names = [s.name for s in find_sites(model)]
    assert "final_norm" not in names and "layers.1.hidden" in names
    assert "no final norm" in caplog.text


def test_regex_mode_hooks_module_outputs_with_probed_widths():
    model = _load("tiny-qwen3")
    sites = find_sites(model, r"layers\.\d+\.(mlp\.up_proj|self_attn\.q_norm)$")
    assert [(s.name, s.num_channels, s.layer) for s in sites] == [
        ("layers.0.self_attn.q_norm.output", 16, 0), ("layers.0.mlp.up_proj.output", 96, 0),
        ("layers.1.self_attn.q_norm.output", 16, 1), ("layers.1.mlp.up_proj.output", 96, 1)]
    assert all(s.component == "module" and not s.track_tokens for s in sites)


def test_regex_mode_errors():
    model = _load("tiny-qwen3")
    with pytest.raises(SiteDiscoveryError, match="matches no module"):
        find_sites(model, r"^nothing_here$")
    with pytest.raises(SiteDiscoveryError, match="valid regex"):
        find_sites(model, r"layers.(")


class _NoDecoder(nn.Module):
    """An embedding followed by plain blocks without attention/MLP children."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(16, 8)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3)])

    def get_input_embeddings(self):
        return self.wte

    def forward(self, input_ids=None, **kwargs):
        x = self.wte(input_ids)
        for block in self.blocks:
            x = block(x)
        return x


def test_unmappable_architecture_names_what_was_found_and_the_way_out():
    with pytest.raises(SiteDiscoveryError) as info:
        find_sites(_NoDecoder())
    message = str(info.value)
    assert "'blocks' (3 x Sequential: 0, 1)" in message
    assert "--sites REGEX" in message and "\n" not in message
    # the way out works: a regex needs no decoder structure
    sites = find_sites(_NoDecoder(), r"^blocks\.\d+$")
    assert [(s.name, s.num_channels, s.layer) for s in sites] == [
        ("blocks.0.output", 8, 0), ("blocks.1.output", 8, 1), ("blocks.2.output", 8, 2)]


def test_overrides_correct_an_ambiguous_structure():
    model = _load("tiny-qwen3")
    # pretend the gate projection were named differently: an override points at it
    sites = find_sites(model, overrides={"gate": "up_proj"})
    gates = {s.name: s.module_name for s in sites if s.component == "gate"}
    assert gates == {"layers.0.gate": "layers.0.mlp.up_proj", "layers.1.gate": "layers.1.mlp.up_proj"}
