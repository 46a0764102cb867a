"""Capture the tensors a scan's hooks see, with plain forward hooks of the test's own (no maxact code)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _router_logits(value, experts):
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() and value.shape[-1] == experts else None
    if isinstance(value, (tuple, list)):
        for v in value:
            t = _router_logits(v, experts)
            if t is not None:
                return t
    return None


class Capture:
    """Probe for maxact.scan.runner.LoopProbes: records every site's tensor with its batch's rows."""

    def __init__(self):
        self.rows = defaultdict(list)       # site -> list of (x float32 [rows, C], sample, position)
        self.specs = {}
        self.batch = None
        self.handles = []

    # LoopProbes.on_model
    def on_model(self, model, specs):
        for spec in specs:
            if spec.expert is not None:
                continue
            self.specs[spec.name] = spec
            module = model.get_submodule(spec.module_name)
            if spec.capture == "output":
                self.handles.append(module.register_forward_hook(self._output(spec)))
            else:
                self.handles.append(module.register_forward_pre_hook(self._input(spec), with_kwargs=True))

    # LoopProbes.before_forward
    def before_forward(self, batch):
        self.batch = batch

    def _record(self, spec, t):
        if t is None:
            return
        if spec.part == "gate_half":
            t = t[..., : spec.num_channels]
        x = t.detach().float().reshape(-1, spec.num_channels).cpu().numpy().copy()
        b = self.batch
        if x.shape[0] != b.row_mask().shape[0]:
            return
        keep = b.row_mask().numpy()
        self.rows[spec.name].append((x[keep], b.row_sample_ids().numpy()[keep], b.row_positions().numpy()[keep]))

    def _output(self, spec):
        def hook(_m, _a, out):
            t = _router_logits(out, spec.num_channels) if spec.component == "router" else _first_tensor(out)
            self._record(spec, t)
        return hook

    def _input(self, spec):
        def hook(_m, args, kwargs):
            t = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("hidden_states")
            self._record(spec, t)
        return hook

    def site(self, name, min_position=0):
        parts = self.rows[name]
        x = np.concatenate([p[0] for p in parts])
        s = np.concatenate([p[1] for p in parts])
        pos = np.concatenate([p[2] for p in parts])
        keep = pos >= min_position
        return x[keep], s[keep], pos[keep]

    def remove(self):
        for h in self.handles:
            h.remove()
