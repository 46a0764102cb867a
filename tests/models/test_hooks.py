"""The hook layer: what each site's state receives, against plain forward hooks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maxact.discovery import find_sites
from maxact.hooks import BatchContext, attach, make_states, run_forward, site_devices
from maxact.models import load_model
from maxact.sites import SiteSpec

from model_fixtures import (
    PaddedBatch,
    Recorder,
    capture_outputs,
    first_tensor,
    padded_batch,
    tiny_causal_lm,
    write_bailing_checkpoint,
)


def _load(name):
    return load_model(f"random:{name}", dtype="float32", device="cpu").model


def _ctx(batch):
    ctx = BatchContext()
    ctx.set_batch(batch, "cpu")
    return ctx


def _all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_delivered_tensors_equal_plain_hook_captures():
    model = _load("tiny-qwen3")
    sites = find_sites(model)
    batch = padded_batch([6, 4, 2], vocab=200)
    states = {s.name: Recorder() for s in sites}
    plain, handles = capture_outputs(model, sorted({s.module_name for s in sites}))
    with attach(model, sites, states, _ctx(batch)):
        run_forward(model, batch)
    for handle in handles:
        handle.remove()
    for site in sites:
        (x, mask, sample_ids, positions), = states[site.name].calls
        expected = first_tensor(plain[site.module_name][0]).reshape(-1, site.num_channels)
        assert torch.equal(x, expected), site.name
        assert torch.equal(mask, batch.row_mask())
        assert torch.equal(sample_ids, torch.tensor([0] * 6 + [1] * 6 + [2] * 6))
        assert torch.equal(positions, torch.arange(6).repeat(3))


def test_hooks_are_removed_on_exit_and_on_error():
    model = _load("tiny-qwen3")
    sites = find_sites(model, "all")
    before = _all_hooks(model)
    batch = padded_batch([3], vocab=200)
    with attach(model, sites, {s.name: Recorder() for s in sites}, _ctx(batch)):
        assert _all_hooks(model) > before
    assert _all_hooks(model) == before
    with pytest.raises(ZeroDivisionError):
        with attach(model, sites, {s.name: Recorder() for s in sites}, _ctx(batch)):
            1 / 0
    assert _all_hooks(model) == before
    # a hook that raises inside the forward pass also leaves no hook behind
    bad = [SiteSpec("layers.0.hidden", "hidden", 0, "layers.0", "output", None, True, 63)]
    with pytest.raises(RuntimeError, match="expected last dimension 63"):
        with attach(model, bad, {"layers.0.hidden": Recorder()}, _ctx(batch)):
            run_forward(model, batch)
    assert _all_hooks(model) == before


def test_empty_context_is_an_error_not_silent_padding():
    model = _load("tiny-qwen3")
    sites = find_sites(model)[:1]
    with pytest.raises(RuntimeError, match="BatchContext is empty"):
        with attach(model, sites, {sites[0].name: Recorder()}, BatchContext()):
            run_forward(model, padded_batch([3], vocab=200))


def test_missing_state_is_reported_before_registration():
    model = _load("tiny-qwen3")
    sites = find_sites(model)
    with pytest.raises(KeyError, match="no state for site"):
        with attach(model, sites, {}, BatchContext()):
            pass
    assert _all_hooks(model) == 0


def test_gate_half_of_fused_gate_up_projection():
    model = tiny_causal_lm("phi3", intermediate_size=48).model
    gates = [s for s in find_sites(model) if s.component == "gate"]
    assert [(s.module_name, s.part, s.num_channels) for s in gates] == [
        ("layers.0.mlp.gate_up_proj", "gate_half", 48), ("layers.1.mlp.gate_up_proj", "gate_half", 48)]
    batch = padded_batch([5, 2], vocab=200)
    plain, handles = capture_outputs(model, [s.module_name for s in gates])
    states = {s.name: Recorder() for s in gates}
    with attach(model, gates, states, _ctx(batch)):
        run_forward(model, batch)
    for handle in handles:
        handle.remove()
    for site in gates:
        (x, mask, _, _), = states[site.name].calls
        gate, _up = plain[site.module_name][0].chunk(2, dim=-1)  # Phi3MLP's own split
        assert torch.equal(x, gate.reshape(-1, 48)) and torch.equal(mask, batch.row_mask())


def _router_truth(model, router_path, top_k, *, softmax_first):
    """Hook a router's input independently; logits and top-k indices recomputed from its weight."""
    store, handles = capture_outputs(model, [router_path], inputs=True)
    return store, handles, lambda: _recompute(model, store[router_path][0], router_path, top_k, softmax_first)


def _recompute(model, call, router_path, top_k, softmax_first):
    args, kwargs = call
    router = model.get_submodule(router_path)
    hidden = (args[0] if args else kwargs["hidden_states"]).reshape(-1, router.weight.shape[1])
    logits = F.linear(hidden, router.weight, getattr(router, "bias", None))
    scores = logits.softmax(-1) if softmax_first else logits
    return logits, scores.topk(top_k, dim=-1).indices


@pytest.mark.parametrize("name, router, softmax_first", [("tiny-qwen3-moe", "mlp.gate", True),
                                                        ("tiny-gpt-oss", "mlp.router", False)])
def test_router_logits_and_expert_token_counts(name, router, softmax_first):
    model = _load(name)
    sites = [s for s in find_sites(model) if s.component == "router"]
    batch = padded_batch([7, 3], vocab=200)
    path = f"layers.1.{router}"
    store, handles, truth = _router_truth(model, path, 2, softmax_first=softmax_first)
    states = {s.name: Recorder() for s in sites}
    with attach(model, sites, states, _ctx(batch)) as handle:
        run_forward(model, batch)
    for h in handles:
        h.remove()
    logits, indices = truth()
    (x, mask, _, _), = states["layers.1.router"].calls
    torch.testing.assert_close(x, logits, rtol=1e-6, atol=1e-6)
    assert torch.equal(mask, batch.row_mask())
    real = batch.row_mask()
    expected = torch.bincount(indices[real].reshape(-1), minlength=4)
    assert torch.equal(handle.expert_tokens["layers.1.router"], expected)
    assert int(expected.sum()) == 10 * 2  # 10 real tokens, top-2


def test_fused_expert_sites_mask_rows_not_routed_to_their_expert():
    model = _load("tiny-qwen3-moe")
    sites = [s for s in find_sites(model, "linear-inputs") if s.module_name == "layers.0.mlp.experts"]
    batch = padded_batch([6, 6, 1], vocab=200)
    store, handles, truth = _router_truth(model, "layers.0.mlp.gate", 2, softmax_first=True)
    block_input, more = capture_outputs(model, ["layers.0.mlp.experts"], inputs=True)
    states = {s.name: Recorder() for s in sites}
    with attach(model, sites, states, _ctx(batch)) as handle:
        run_forward(model, batch)
    for h in handles + more:
        h.remove()
    _, indices = truth()
    experts_input = block_input["layers.0.mlp.experts"][0][0][0]
    real = batch.row_mask()
    (x, mask, sample_ids, positions), = states["layers.0.mlp.experts.gate_up_proj.input"].calls
    assert torch.equal(x, experts_input) and torch.equal(mask, real)
    assert torch.equal(positions, batch.row_positions())
    routed_total = 0
    for e in range(4):
        (x, mask, sample_ids, positions), = states[f"layers.0.mlp.experts.{e}.gate_up_proj.input"].calls
        expected_mask = real & (indices == e).any(-1)
        assert torch.equal(x, experts_input) and torch.equal(mask, expected_mask), e
        assert torch.equal(sample_ids, batch.row_sample_ids())
        routed_total += int(expected_mask.sum())
    assert routed_total == 13 * 2
    assert handle.missing() == []


def test_bailing_router_logits_are_the_last_output_and_expert_linears_lose_locations(tmp_path):
    directory = write_bailing_checkpoint(tmp_path / "ling-tiny")
    model = load_model(str(directory), trust_remote_code=True, tokenizer=False, device="cpu", dtype="float32").model
    sites = [s for s in find_sites(model, "all")
             if s.component == "router" or s.module_name.startswith("layers.1.mlp.experts.")]
    batch = padded_batch([5, 4], vocab=200)
    store, handles, truth = _router_truth(model, "layers.1.mlp.gate", 2, softmax_first=True)
    states = {s.name: Recorder() for s in sites}
    with attach(model, sites, states, _ctx(batch)) as handle:
        run_forward(model, batch)
    for h in handles:
        h.remove()
    logits, indices = truth()
    (x, _, _, _), = states["layers.1.router"].calls
    # BailingMoeGate returns (topk_idx, topk_weight, logits): the hook must take the logits
    torch.testing.assert_close(x, logits, rtol=1e-6, atol=1e-6)
    real = batch.row_mask()
    assert torch.equal(handle.expert_tokens["layers.1.router"], torch.bincount(indices[real].reshape(-1), minlength=4))
    # nn.ModuleList experts see only their routed tokens (padding included): no mask, no locations
    routed = 0
    for e in range(4):
        calls = states[f"layers.1.mlp.experts.{e}.gate_proj.input"].calls
        for x, mask, sample_ids, positions in calls:
            assert mask is None and sample_ids is None and positions is None
            routed += x.shape[0]
    assert routed == 10 * 2  # all 10 rows (padding too) x top-2


def test_missing_lists_sites_that_never_fire():
    model = _load("tiny-qwen3")
    sites = find_sites(model)[:2] + [SiteSpec("layers.output", "module", None, "layers", "output", None, False, 64)]
    with attach(model, sites, {s.name: Recorder() for s in sites}, _ctx(padded_batch([4], vocab=200))) as handle:
        run_forward(model, padded_batch([4], vocab=200))
        run_forward(model, padded_batch([4], vocab=200))
    assert handle.calls == {"embedding": 2, "layers.0.attn": 2, "layers.output": 0}
    assert handle.missing() == ["layers.output"]


def _masked_abs_max(tensor, mask):
    rows = tensor.reshape(-1, tensor.shape[-1]).double()
    if mask is not None:
        rows = rows[mask]
    return float(rows.abs().max()) if rows.numel() else float("nan")


def test_real_activation_stats_match_independent_captures():
    pytest.importorskip("maxact_kernels")
    model = _load("tiny-qwen3-moe")
    sites = find_sites(model, "all")
    batch = padded_batch([7, 5, 2], vocab=200, sample_ids=[2, 0, 1])
    states = make_states(sites, model=model, backend="reference", topk=3, num_samples=3, track_channels=True)
    outputs, h1 = capture_outputs(model, sorted({s.module_name for s in sites if s.capture == "output"}))
    inputs, h2 = capture_outputs(model, sorted({s.module_name for s in sites if s.capture == "input"}), inputs=True)
    truths = [_router_truth(model, f"layers.{i}.mlp.gate", 2, softmax_first=True) for i in range(2)]
    with attach(model, sites, states, _ctx(batch)):
        run_forward(model, batch)
    for h in h1 + h2 + [h for _, hs, _ in truths for h in hs]:
        h.remove()
    real = batch.row_mask()
    routing = [truth()[1] for _, _, truth in truths]
    checked = 0
    for site in sites:
        summary = states[site.name].summary()
        if site.capture == "output":
            tensor = first_tensor(outputs[site.module_name][0])  # Qwen3 router: (logits, scores, indices)
        else:
            args, kwargs = inputs[site.module_name][0]
            tensor = args[0]
        mask = real
        if site.expert is not None:
            mask = real & (routing[site.layer] == site.expert).any(-1)
        expected = _masked_abs_max(tensor, mask)
        if np.isnan(expected):
            assert summary["count"] == 0
            continue
        assert summary["abs_max"] == pytest.approx(expected, rel=0, abs=0), site.name
        rows = tensor.reshape(-1, site.num_channels)[mask].double().abs()
        assert summary["count"] == rows.numel(), site.name
        np.testing.assert_array_equal(summary["channel_abs_max"], rows.max(0).values.float().numpy())
        # per-sample peaks follow the batch's sample ids (rows 0-6 are sample 2, 7-13 sample 0, ...)
        sample_of_row = batch.row_sample_ids()[mask]
        for sample in range(3):
            picked = rows[sample_of_row == sample]
            peak = float(picked.max()) if picked.numel() else 0.0
            assert summary["sample_abs_max"][sample] == np.float32(peak), (site.name, sample)
        top = summary["topk"]
        assert top["abs"][0] == np.float32(expected)
        row = int(torch.nonzero(rows.max(-1).values == float(rows.max()))[0])
        location = (int(sample_of_row[row]), int(batch.row_positions()[mask][row]))
        assert (top["sample"][0], top["position"][0]) == location
        checked += 1
    assert checked == len(sites)


def test_make_states_places_states_and_tracks_tokens_on_residual_sites():
    pytest.importorskip("maxact_kernels")
    model = _load("tiny-qwen3-moe")
    sites = find_sites(model)
    states = make_states(sites, device="cpu", backend="reference")
    assert set(states) == {s.name for s in sites}
    for site in sites:
        st = states[site.name]
        assert st.num_channels == site.num_channels and st.device == torch.device("cpu")
        assert st.config.track_tokens == site.track_tokens
    assert set(site_devices(model, sites).values()) == {torch.device("cpu")}
    per_site = make_states(sites[:2], device={sites[0].name: "cpu", sites[1].name: "cpu"}, backend="reference",
                           token_median="candidates")
    assert per_site[sites[0].name].config.token_median == "candidates"
    with pytest.raises(ValueError, match="device= or model="):
        make_states(sites)


def test_run_forward_accepts_batch_dict_and_tuple_and_returns_nothing():
    model = _load("tiny-qwen3")
    batch = padded_batch([4, 2], vocab=200)
    seen = []
    handle = model.layers[1].register_forward_hook(
        lambda _m, _a, out: seen.append((torch.is_inference_mode_enabled(), first_tensor(out).clone())))
    try:
        assert run_forward(model, batch) is None
        run_forward(model, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
        run_forward(model, (batch.input_ids, batch.attention_mask))
    finally:
        handle.remove()
    assert all(flag for flag, _ in seen)
    assert torch.equal(seen[0][1], seen[1][1]) and torch.equal(seen[0][1], seen[2][1])


def test_batch_context_validates_and_copies_per_device():
    ctx = BatchContext()
    assert ctx.rows == -1
    with pytest.raises(ValueError):
        ctx.set(torch.ones(4, dtype=torch.bool), torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    batch = PaddedBatch(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [1, 0, 0]]), torch.tensor([5, 9]))
    ctx.set_batch(batch, "cpu")
    mask, sample_ids, positions = ctx.on(torch.device("cpu"))
    assert ctx.rows == 6 and mask.tolist() == [True, True, False, True, False, False]
    assert sample_ids.tolist() == [5, 5, 5, 9, 9, 9] and positions.tolist() == [0, 1, 2, 0, 1, 2]
    ctx.clear()
    with pytest.raises(RuntimeError, match="empty"):
        ctx.on(torch.device("cpu"))


class _NullState:
    """update() that keeps a reference and does no device work: isolates the hook layer's own ops."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.last = None

    def update(self, x, mask=None, sample_ids=None, positions=None):
        self.last = (x, mask, sample_ids, positions)


@pytest.mark.gpu
@pytest.mark.parametrize("states_kind", ["null", "activation_stats"])
def test_hooks_do_not_synchronise_the_host(states_kind):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = load_model("random:tiny-qwen3-moe", dtype="bfloat16", device="cuda").model
    sites = find_sites(model, "all")
    if states_kind == "null":
        states = {s.name: _NullState(torch.device("cuda", torch.cuda.current_device())) for s in sites}
    else:
        pytest.importorskip("maxact_kernels")
        states = make_states(sites, model=model, topk=4, num_samples=2)
    batch = padded_batch([6, 3], vocab=200)
    ctx = BatchContext()
    ctx.set_batch(batch, "cuda")
    outputs, h1 = capture_outputs(model, sorted({s.module_name for s in sites if s.capture == "output"}))
    inputs, h2 = capture_outputs(model, sorted({s.module_name for s in sites if s.capture == "input"}), inputs=True)
    run_forward(model, batch)  # the model itself may sync (MoE loops); capture its tensors first
    for h in h1 + h2:
        h.remove()
    with attach(model, sites, states, ctx) as handle:
        ctx.on(torch.device("cuda", torch.cuda.current_device()))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            # call the registered hooks on the captured tensors: only hook (and update) work runs
            for module_name in {s.module_name for s in sites}:
                module = model.get_submodule(module_name)
                for hook in module._forward_hooks.values():
                    hook(module, (), outputs[module_name][0])
                for hook in module._forward_pre_hooks.values():
                    args, kwargs = inputs[module_name][0]
                    hook(module, args, kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert handle.missing() == []
