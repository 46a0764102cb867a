"""MoE coverage (issue 8, item 2): tokens routed to each expert equal a plain top-k count over the router
logits of the same batches (captured by the test's own hooks); --min-expert-tokens names the experts
under it in the end-of-scan warnings and stats.json; the report shows the counts."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from scan_capture import Capture

from maxact.scan import ScanConfig
from maxact.scan.__main__ import build_parser, config_from_args
from maxact.scan.__main__ import main as scan_main
from maxact.scan.runner import LoopProbes, scan

TOP_K = 2   # tiny-qwen3-moe: 4 experts, 2 per token


def moe_scan(tmp_path, corpus, **kw):
    cap = Capture()
    cfg = ScanConfig(model="random:tiny-qwen3-moe", corpus=str(corpus), device="cpu", dtype="float32",
                     backend="reference", tokens_per_batch=30, out=str(tmp_path / "out"), progress=False, **kw)
    result = scan(cfg, probes=LoopProbes(on_model=cap.on_model, before_forward=cap.before_forward))
    cap.remove()
    return result, json.loads((tmp_path / "out" / "stats.json").read_text()), cap


def plain_counts(logits: np.ndarray, experts: int) -> list[int]:
    """Tokens routed to each expert: top-k of each real token's router logits (softmax keeps the order)."""
    idx = torch.topk(torch.from_numpy(logits), TOP_K, dim=-1).indices.reshape(-1)
    return torch.bincount(idx, minlength=experts).tolist()


def test_expert_counts_equal_a_plain_topk_count(tmp_path, corpus_file):
    _, doc, cap = moe_scan(tmp_path, corpus_file)
    routers = {k: v for k, v in doc["sites"].items() if v["component"] == "router"}
    assert sorted(routers) == ["layers.0.router", "layers.1.router"]
    for name, entry in routers.items():
        logits, _, _ = cap.site(name)            # real tokens only (padding rows dropped by the capture)
        assert logits.shape == (83, 4)
        assert entry["expert_tokens"] == plain_counts(logits, 4), name
    cov = doc["experts"]
    assert cov["min_expert_tokens"] == 16 and cov["routers"] == 2 and cov["experts"] == 8
    counts = [c for e in routers.values() for c in e["expert_tokens"]]
    assert cov["min_tokens"] == min(counts)
    assert cov["under_min"] == [{"site": n, "layer": e["layer"], "expert": i, "tokens": c}
                                for n, e in routers.items() for i, c in enumerate(e["expert_tokens"]) if c < 16]


def test_warning_names_experts_under_the_threshold(tmp_path, corpus_file, caplog):
    with caplog.at_level(logging.WARNING):
        result, doc, _ = moe_scan(tmp_path, corpus_file, min_expert_tokens=45)
    routers = {k: v["expert_tokens"] for k, v in doc["sites"].items() if v["component"] == "router"}
    starved = [(n, i, c) for n, counts in routers.items() for i, c in enumerate(counts) if c < 45]
    not_starved = [(n, i, c) for n, counts in routers.items() for i, c in enumerate(counts) if c >= 45]
    assert starved and not_starved      # 166 routed tokens over 4 experts: some on each side of 45
    assert [(e["site"], e["expert"], e["tokens"]) for e in doc["experts"]["under_min"]] == starved
    warning = [w for w in doc["warnings"] if "MoE expert" in w]
    assert len(warning) == 1 and f"{len(starved)} MoE expert(s) received fewer than 45 tokens" in warning[0]
    for name, expert, count in starved:
        assert f"{name} expert {expert} ({count} tokens)" in warning[0]
    for name, expert, count in not_starved:
        assert f"{name} expert {expert} (" not in warning[0]
    assert any(r.levelno == logging.WARNING and "MoE expert" in r.message for r in caplog.records)
    assert result.starved_experts(45) == doc["experts"]["under_min"]
    table = result.table()      # the end-of-scan table names them too
    assert "MoE: 8 experts in 2 router layer(s)" in table and f"{len(starved)} under 45: " in table


def test_no_warning_at_zero_and_dense_models_have_no_expert_block(tmp_path, corpus_file):
    _, doc, _ = moe_scan(tmp_path, corpus_file, min_expert_tokens=0)
    assert doc["experts"]["under_min"] == [] and not any("MoE expert" in w for w in doc["warnings"])
    cfg = ScanConfig(model="random:tiny-qwen3", corpus=str(corpus_file), device="cpu", dtype="float32",
                     backend="reference", tokens_per_batch=30, out=str(tmp_path / "dense"), progress=False)
    scan(cfg)
    assert json.loads((tmp_path / "dense" / "stats.json").read_text())["experts"] is None


def test_cli_flag(tmp_path, capsys):
    args = build_parser().parse_args(["--min-expert-tokens", "5"])
    assert config_from_args(args).min_expert_tokens == 5
    assert build_parser().parse_args([]).min_expert_tokens == 16
    assert scan_main(["--min-expert-tokens", "-1", "--out", str(tmp_path)]) == 2
    assert "--min-expert-tokens" in capsys.readouterr().err


def test_report_shows_expert_counts(tmp_path, corpus_file):
    from maxact.report import build_report

    _, doc, _ = moe_scan(tmp_path, corpus_file, min_expert_tokens=45)
    summary = build_report([tmp_path / "out"], tmp_path / "report")
    cov = next(iter(summary["checkpoints"].values()))["expert_coverage"]
    assert cov["min_expert_tokens"] == 45
    assert {lay["site"]: lay["tokens"] for lay in cov["layers"]} == {
        k: v["expert_tokens"] for k, v in doc["sites"].items() if v["component"] == "router"}
    assert cov["starved"] == doc["experts"]["under_min"]
    page = (tmp_path / "report" / "report.html").read_text()
    section = page[page.index('<section id="experts">'):]
    section = section[: section.index("</section>")]
    assert "layers.0.router" in section and "under 45" in section
    assert section.count("#f4c7c3") == len(doc["experts"]["under_min"])   # starved cells marked red
