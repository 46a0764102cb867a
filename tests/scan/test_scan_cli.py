"""CLI parsing, ScanConfig validation and round trip, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from maxact.scan.__main__ import build_parser, config_from_args, main
from maxact.scan.config import ScanConfig, default_model_name
from maxact.scan.errors import ScanError


def parse(*argv: str) -> ScanConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_defaults_match_the_brief():
    cfg = parse()
    assert cfg.model == "demo" and cfg.corpus == "builtin"
    assert cfg.max_seq_len == 4096 and cfg.topk == 16 and cfg.sites == "paper"
    assert cfg.sun_t_val == 100.0 and cfg.sun_t_ratio == 1000.0
    assert cfg.track_channels and cfg.track_tokens and cfg.token_median == "candidates"
    assert cfg.backend == "auto" and cfg.dtype == "bfloat16" and cfg.attn == "sdpa"
    assert str(cfg.out_dir) == "results/gemma-3-270m-q4_k_m"


def test_every_flag_reaches_the_config():
    cfg = parse("--model", "random:tiny-qwen3", "--corpus", "x.jsonl", "--dtype", "float32", "--attn", "eager",
                "--device", "cpu", "--device-map", "auto", "--trust-remote-code", "--sites", r"layers\.0\..*",
                "--tokens-per-batch", "512", "--max-seq-len", "128", "--max-samples", "7", "--topk", "3",
                "--no-channels", "--no-tokens", "--token-median", "all", "--sun-t-val", "50",
                "--sun-t-ratio", "20", "--backend", "reference", "--out", "o", "--export", "max-act-llm",
                "--checkpoint-every", "5", "--resume", "--skip-bad-lines", "--skip-first-tokens", "2",
                "--seed", "3", "--sync-every", "4", "-q")
    assert cfg == ScanConfig(model="random:tiny-qwen3", corpus="x.jsonl", dtype="float32", attn="eager",
                             device="cpu", device_map="auto", trust_remote_code=True, sites=r"layers\.0\..*",
                             tokens_per_batch=512, max_seq_len=128, max_samples=7, topk=3,
                             track_channels=False, track_tokens=False, token_median="all",
                             sun_t_val=50.0, sun_t_ratio=20.0, backend="reference", out="o",
                             export=("max-act-llm",), checkpoint_every=5, resume=True, skip_bad_lines=True,
                             skip_first_tokens=2, seed=3, sync_every=4, progress=False)


def test_config_round_trips_through_json():
    cfg = parse("--model", "m", "--export", "max-act-llm", "--max-samples", "3")
    again = ScanConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(Exception):
        cfg.model = "other"   # frozen


@pytest.mark.parametrize("kwargs, fragment", [
    ({"tokens_per_batch": 0}, "--tokens-per-batch"),
    ({"sites": "("}, "--sites"),
    ({"skip_first_tokens": 4096}, "--skip-first-tokens"),
    ({"device": "gpu7"}, "--device"),
    ({"device_map": "balanced"}, "--device-map"),
    ({"checkpoint_every": -1}, "--checkpoint-every"),
])
def test_invalid_settings_are_one_line_errors(kwargs, fragment):
    with pytest.raises(ScanError, match=fragment) as info:
        ScanConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_invalid_flag_value_exits_2(capsys):
    assert main(["--tokens-per-batch", "0", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tokens-per-batch") and err.count("\n") == 1


def test_model_names():
    assert default_model_name("demo") == "gemma-3-270m-q4_k_m"
    assert default_model_name("Qwen/Qwen3-8B") == "Qwen3-8B"
    assert default_model_name("/models/gemma-3-4b/") == "gemma-3-4b"
    assert default_model_name("/x/y/model-q4.gguf") == "model-q4"
    assert default_model_name("random:tiny-qwen3") == "random-tiny-qwen3"


def test_help_is_fast_and_lists_groups_and_examples():
    out = subprocess.run([sys.executable, "-m", "maxact.scan", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for group in ("model:", "corpus:", "batching:", "statistics:", "output:", "performance:", "examples:"):
        assert group in out.stdout
    # heavy imports happen after parsing: --help must not have imported transformers
    probe = subprocess.run([sys.executable, "-c",
                            "import sys; from maxact.scan.__main__ import build_parser; build_parser();"
                            "print('transformers' in sys.modules, 'torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.split() == ["False", "False"]
