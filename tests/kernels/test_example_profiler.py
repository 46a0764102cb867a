"""examples/own_profiler.py runs with maxact_kernels alone and reports the right numbers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "own_profiler.py"


def load_example():
    spec = importlib.util.spec_from_file_location("own_profiler_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def captured_outputs(example, lengths=(12, 7, 16)):
    """The hooked modules' outputs, captured independently, with the batch's real-token mask."""
    model = example.build_model()
    batch = example.make_batch(list(lengths), model.config.vocab_size)
    outs, handles = {}, []
    for i, layer in enumerate(model.model.layers):
        for name, mod in ((f"layers.{i}.hidden", layer), (f"layers.{i}.mlp", layer.mlp)):
            handles.append(mod.register_forward_hook(
                lambda m, a, o, name=name: outs.__setitem__(name, (o[0] if isinstance(o, tuple) else o).detach())))
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for h in handles:
        h.remove()
    return outs, batch["attention_mask"].bool()


def test_example_runs_without_maxact(tmp_path):
    out = tmp_path / "summary.json"
    code = (
        "import runpy, sys; "
        f"sys.argv = ['own_profiler.py', '--json', {str(out)!r}]; "
        f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__'); "
        "bad = [m for m in sys.modules if m == 'maxact' or m.startswith('maxact.')]; "
        "assert not bad, bad"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "layers.1.hidden" in proc.stdout
    res = json.loads(out.read_text())

    outs, mask = captured_outputs(load_example())
    assert set(res) == set(outs)
    for name, y in outs.items():
        real = y[mask].float()  # [real tokens, 32]
        s = res[name]
        assert s["count"] == real.numel()
        assert s["abs_max"] == real.abs().max().item()
        assert s["max"] == real.max().item() and s["min"] == real.min().item()
        np.testing.assert_allclose(s["mean"], real.double().mean().item(), rtol=1e-9, atol=1e-12)
        assert s["sun"]["n_tokens"] == int(mask.sum())
        tmax = real.abs().amax(dim=1)
        tmed = real.abs().median(dim=1).values
        n_pass = int(((tmax > 20.0) & (tmax.double() > 100.0 * tmed.double())).sum())
        assert s["sun"]["n_pass"] == n_pass
    # the planted massive activation: token 3 at (sample 0, position 4), channel 5, in the residual stream
    hidden = res["layers.1.hidden"]["sun"]
    assert hidden["n_pass"] == 2
    assert (hidden["peak_sample"], hidden["peak_position"], hidden["peak_channel"]) == (0, 4, 5)
