"""Planning of replicas spread over several GPUs (``--gpus-per-replica``, ``--device-map auto``), the tree
merge of the ranks' states, and random models spread over devices. CPU only: device lists are mocked
(no accelerate device map over two CPU "devices" exists), the planning functions are tested directly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from maxact.random_spread import build_spread, layer_devices, plan_device_map
from maxact.scan import checkpoint as ckpt_io
from maxact.scan import runner
from maxact.scan.__main__ import build_parser, config_from_args
from maxact.scan.config import ScanConfig
from maxact.scan.errors import ScanError
from maxact.scan.parallel import tree_schedule
from maxact.scan.replicas import VISIBLE, check_visible, narrow_visible_gpus, plan_replica, visible_gpus

# ---------------------------------------------------------------------------------------------
# local rank -> GPUs of its replica


def _plan(rank, world, local_rank, local_world, k, visible=None):
    return plan_replica(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                        gpus_per_replica=k, visible=visible)


def test_each_local_rank_takes_its_own_block_of_gpus():
    # 8 GPUs, 4 processes per node, 2 GPUs per replica
    plans = [_plan(r, 4, r, 4, 2) for r in range(4)]
    assert [p.gpus for p in plans] == [("0", "1"), ("2", "3"), ("4", "5"), ("6", "7")]
    assert all(p.devices == ["cuda:0", "cuda:1"] for p in plans)   # as the narrowed process names them
    assert [p.replica for p in plans] == [0, 1, 2, 3] and plans[0].num_replicas == 4


def test_second_node_and_a_restricted_visible_list():
    # node 2 of 2 (global rank 5 = local rank 1), the job was given GPUs 4-7 of each node
    p = _plan(5, 8, 1, 4, 1, visible=["4", "5", "6", "7"])
    assert p.gpus == ("5",) and p.replica == 5 and p.num_replicas == 8
    p = _plan(3, 4, 1, 2, 2, visible=["GPU-aa", "GPU-bb", "GPU-cc", "GPU-dd"])   # UUIDs work too
    assert p.gpus == ("GPU-cc", "GPU-dd")


def test_too_few_gpus_names_the_numbers():
    with pytest.raises(ScanError, match=r"needs 4 GPUs.*lists 3.*--nproc-per-node 1"):
        _plan(0, 2, 0, 2, 2, visible=["0", "1", "2"])
    with pytest.raises(ScanError, match="positive"):
        _plan(0, 1, 0, 1, 0)


def test_narrowing_sets_cuda_visible_devices_for_this_rank_only():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", VISIBLE: "0,1,2,3"}
    plan = narrow_visible_gpus(2, env)
    assert env[VISIBLE] == "2,3" and plan.gpus == ("2", "3") and plan.replica == 3
    untouched = {"LOCAL_RANK": "0"}
    assert narrow_visible_gpus(None, untouched) is None and VISIBLE not in untouched
    assert visible_gpus({}) is None and visible_gpus({VISIBLE: ""}) == []


def test_check_visible_catches_narrowing_that_came_too_late():
    plan = _plan(0, 1, 0, 1, 2)
    check_visible(plan, 2)
    check_visible(None, 8)
    with pytest.raises(ScanError, match="should see GPUs 0,1 but CUDA shows 8"):
        check_visible(plan, 8)


def test_flags_reach_the_config_and_are_validated():
    args = build_parser().parse_args(["--device-map", "auto", "--gpus-per-replica", "2", "--dist-timeout", "90"])
    cfg = config_from_args(args)
    assert cfg.gpus_per_replica == 2 and cfg.dist_timeout_s == 90.0
    d = config_from_args(build_parser().parse_args([]))
    assert d.gpus_per_replica is None and d.dist_timeout_s == 1800.0
    # layout and timeout do not change what is measured: a checkpoint resumes across them
    assert cfg.measurement_fingerprint() == ScanConfig(device_map="auto").measurement_fingerprint()
    with pytest.raises(ScanError, match="needs --device-map auto"):
        ScanConfig(gpus_per_replica=2)
    with pytest.raises(ScanError, match="not on --device cpu"):
        ScanConfig(gpus_per_replica=1, device="cpu")
    with pytest.raises(ScanError, match="--dist-timeout"):
        ScanConfig(dist_timeout_s=0)


# ---------------------------------------------------------------------------------------------
# the tree merge


@pytest.mark.parametrize("world", range(1, 10))
def test_tree_folds_every_rank_once_in_rank_order(world):
    objs = [[r] for r in range(world)]
    for pairs in tree_schedule(world):
        receivers = [r for r, _ in pairs]
        senders = [s for _, s in pairs]
        assert not set(receivers) & set(senders)   # nobody sends and receives in one round
        for r, s in pairs:
            objs[r] = objs[r] + objs[s]
            objs[s] = None
    assert objs[0] == list(range(world))
    assert len(tree_schedule(world)) == math.ceil(math.log2(world)) if world > 1 else tree_schedule(1) == []


class SimulatedWorld:
    """The reduction of TorchDistributed.reduce_to_main, run in one process over every rank's object."""

    world_size = 5
    is_main = True

    def __init__(self, others):
        self.others = others

    def reduce_to_main(self, obj, combine):
        objs = [obj, *self.others]
        for pairs in tree_schedule(len(objs)):
            for r, s in pairs:
                objs[r] = combine(objs[r], objs[s])
                objs[s] = None
        return objs[0]


def _make():
    from maxact_kernels import ActivationStats

    return ActivationStats(16, device="cpu", backend="reference", track_tokens=True, track_channels=True,
                           topk=8, num_samples=40, sun_abs_threshold=5.0, sun_ratio_threshold=3.0)


def test_states_of_five_ranks_merge_exactly(monkeypatch):
    """Rank states travel as CPU state dicts and are loaded onto each site's device before merging
    (here every device is the CPU); the result equals one state that saw every row."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g, dtype=torch.float32)
    x[17, 3], x[150, 9], x[151, 9] = 80.0, -80.0, 80.0   # ties across ranks break by (sample, position)
    sids = torch.arange(200) // 5
    pos = torch.arange(200) % 5
    whole = _make()
    whole.update(x, sample_ids=sids, positions=pos)
    parts = []
    for chunk in torch.tensor_split(torch.arange(200), [35, 80, 81, 160]):   # uneven, one of 1 row
        st = _make()
        st.update(x[chunk], sample_ids=sids[chunk], positions=pos[chunk])
        parts.append({"site": st.state_dict()})
    ctx = SimulatedWorld([ckpt_io.cpu_states(p) for p in parts[1:]])
    merged_sd = runner._reduce_states(ctx, parts[0], {"site": _make})
    merged = runner._merge_state_dicts([merged_sd], {"site": _make})["site"].summary()
    ref = whole.summary()
    for key in ("count", "min", "max", "abs_max", "nan_count", "posinf_count", "neginf_count"):
        assert merged[key] == ref[key], key
    for key in ("sum", "sum_sq", "abs_sum", "mean", "std", "rms", "abs_mean"):
        assert merged[key] == pytest.approx(ref[key], rel=1e-12), key
    for key in ("abs_hist", "channel_abs_max", "sample_abs_max"):
        assert np.array_equal(merged[key], ref[key]), key
    for key in ref["topk"]:
        assert np.array_equal(merged["topk"][key], ref["topk"][key]), key
    assert json.dumps({k: v for k, v in merged["sun"].items() if "ratio" not in k}, default=str) == \
        json.dumps({k: v for k, v in ref["sun"].items() if "ratio" not in k}, default=str)
    assert merged["topk"]["sample"][:2].tolist() == [3, 30]   # the tie at |x| = 80: sample 3 first


# ---------------------------------------------------------------------------------------------
# random models spread over devices


def test_layers_split_into_contiguous_even_blocks():
    assert layer_devices(80, ["cuda:0", "cuda:1"]) == ["cuda:0"] * 40 + ["cuda:1"] * 40
    assert layer_devices(10, [0, 1, 2]) == [0] * 4 + [1] * 3 + [2] * 3
    with pytest.raises(ValueError):
        layer_devices(4, [])


def test_device_map_of_the_72b_architecture_covers_every_tensor():
    from accelerate import init_empty_weights
    from transformers import AutoModel

    from maxact.architectures import build_config

    cfg = build_config("qwen2.5-72b")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.vocab_size) == (80, 8192, 29568, 64, 8, 152064)
    with init_empty_weights():
        model = AutoModel.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    assert abs((total - embedding) / 70.0e9 - 1) < 0.01   # model card: 70.0B non-embedding parameters
    dmap = plan_device_map(model, ["cuda:0", "cuda:1"], cfg.num_hidden_layers)
    assert [dmap[f"layers.{i}"] for i in (0, 39, 40, 79)] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert dmap["embed_tokens"] == "cuda:0"
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    for n in names:   # every tensor under exactly one key
        assert sum(n.startswith(k + ".") for k in dmap) == 1, n


def test_spread_build_places_and_initialises_every_tensor():
    from transformers import AutoModel

    from maxact.architectures import build_config

    spread = build_spread(build_config("tiny-qwen3"), dtype=torch.float32, attn="sdpa", seed=3,
                          devices=["cpu", "cpu"])
    again = build_spread(build_config("tiny-qwen3"), dtype=torch.float32, attn="sdpa", seed=3,
                         devices=["cpu", "cpu"])
    normal = AutoModel.from_config(build_config("tiny-qwen3"), dtype=torch.float32)
    assert not [n for n, p in spread.named_parameters() if p.device.type == "meta"]
    for n, b in normal.named_buffers():   # rotary frequencies etc. as in a normal build
        assert torch.equal(dict(spread.named_buffers())[n], b), n
    for (n, p), (_, q) in zip(spread.named_parameters(), again.named_parameters()):   # same seed, same weights
        assert torch.equal(p, q), n
    w = spread.layers[0].mlp.up_proj.weight
    assert 0.015 < float(w.std()) < 0.025   # initializer_range 0.02, not leftover memory
    assert torch.equal(spread.norm.weight, torch.ones_like(spread.norm.weight))
    with torch.no_grad():
        out = spread(input_ids=torch.tensor([[5, 6, 7]])).last_hidden_state
    assert torch.isfinite(out).all()


def test_random_model_with_device_map_needs_a_gpu():
    from maxact.models import ModelLoadError, load_model

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the spread build would run")
    with pytest.raises(ModelLoadError, match="at least one GPU"):
        load_model("random:tiny-qwen3", dtype="float32", device_map="auto")


def test_layout_line_counts_modules_per_device():
    from maxact.scan.replicas import describe

    line = describe(_plan(1, 2, 1, 2, 2), {"embed_tokens": 0, "layers.0": 0, "layers.1": 1, "norm": 0})
    assert line == "replica 1 of 2 on GPUs 2,3 (modules per device: 0: 3, 1: 1)"
