"""A profiler of its own, built on ``maxact_kernels`` alone (nothing of ``maxact``).

It puts one :class:`maxact_kernels.ActivationStats` behind a plain ``register_forward_hook`` per
module (each decoder layer's output = residual stream, and each MLP's output) of a small random
Llama, feeds a right-padded batch with its row mask, sample ids and positions, and prints the
summaries. No statistic syncs with the host until ``summary()``.

    python examples/own_profiler.py                 # CPU: the float64 reference path
    python examples/own_profiler.py --device cuda   # GPU: the fused Triton / CUDA kernels
    python examples/own_profiler.py --json out.json # also save the numbers
"""

from __future__ import annotations

import argparse
import json
import logging

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from maxact_kernels import ActivationStats

log = logging.getLogger("own_profiler")


MASSIVE_TOKEN, MASSIVE_CHANNEL = 3, 5


def build_model(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with hidden size 32 and random weights (nothing is downloaded). Token 3 embeds to a
    large value in channel 5: a planted 'massive activation' that rides the residual stream."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight[MASSIVE_TOKEN, MASSIVE_CHANNEL] = 60.0
    return model


def make_batch(lengths: list[int], vocab: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded token ids for samples of the given lengths, their mask and sample ids."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.randint(MASSIVE_TOKEN + 1, vocab, (len(lengths), t), generator=g)
    ids[0, 4] = ids[-1, 9] = MASSIVE_TOKEN
    attn = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids * attn, "attention_mask": attn, "sample_ids": torch.arange(len(lengths))}


class HookProfiler:
    """ActivationStats behind forward hooks, one per named module; rows are tokens in (sample, position)
    order, which is what ``x.reshape(-1, C)`` gives for a [batch, time, C] output."""

    def __init__(self, modules: dict[str, torch.nn.Module], channels: int, device, num_samples: int):
        self.stats: dict[str, ActivationStats] = {}
        self._rows: dict[str, torch.Tensor] | None = None
        self._handles = []
        for name, module in modules.items():
            self.stats[name] = ActivationStats(channels, device=device, track_tokens=True, track_channels=True,
                                               topk=5, num_samples=num_samples, sun_abs_threshold=20.0,
                                               sun_ratio_threshold=100.0)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            rows = self._rows
            self.stats[name].update(out.detach(), mask=rows["mask"], sample_ids=rows["sample_ids"],
                                    positions=rows["positions"])

        return hook

    @torch.no_grad()
    def run(self, model, batch: dict[str, torch.Tensor]) -> None:
        b, t = batch["input_ids"].shape
        dev = next(model.parameters()).device
        self._rows = {
            "mask": batch["attention_mask"].reshape(-1).bool().to(dev),
            "sample_ids": batch["sample_ids"][:, None].expand(b, t).reshape(-1).to(dev),
            "positions": torch.arange(t)[None, :].expand(b, t).reshape(-1).to(dev),
        }
        model(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev))

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def summaries(self) -> dict[str, dict]:
        return {name: st.summary() for name, st in self.stats.items()}


def profile(device: str = "cpu", lengths=(12, 7, 16)) -> dict[str, dict]:
    """Run the tiny model over one batch and return {site: summary} (plus the 0.999 quantile)."""
    model = build_model().to(device)
    modules = {}
    for i, layer in enumerate(model.model.layers):
        modules[f"layers.{i}.hidden"] = layer
        modules[f"layers.{i}.mlp"] = layer.mlp
    prof = HookProfiler(modules, model.config.hidden_size, device, num_samples=len(lengths))
    try:
        prof.run(model, make_batch(list(lengths), model.config.vocab_size))
    finally:
        prof.close()
    out = prof.summaries()
    for name, st in prof.stats.items():
        out[name]["q999"] = st.quantile(0.999)
    return out


def main(argv=None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", metavar="DEV", help="torch device (default: cpu)")
    parser.add_argument("--json", metavar="PATH", help="also write the scalar statistics to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = profile(args.device)
    print(f"{'site':16s} {'count':>6s} {'abs_max':>9s} {'mean':>9s} {'std':>8s} {'q0.999':>8s} "
          f"{'tokens':>6s} {'pass':>4s}  peak (sample, position, channel)")
    for name, s in res.items():
        sun = s["sun"]
        print(f"{name:16s} {s['count']:6d} {s['abs_max']:9.4f} {s['mean']:9.4f} {s['std']:8.4f} {s['q999']:8.4f} "
              f"{sun['n_tokens']:6d} {sun['n_pass']:4d}  ({sun['peak_sample']}, {sun['peak_position']}, "
              f"{sun['peak_channel']})")
    if args.json:
        scalars = {name: {k: v for k, v in s.items() if isinstance(v, (int, float))} | {"sun": s["sun"]}
                   for name, s in res.items()}
        with open(args.json, "w") as f:
            json.dump(scalars, f, indent=1)
        log.info("wrote %s", args.json)
    return res


if __name__ == "__main__":
    main()
