"""maxact.export: a scan's measurements in the layouts quantization tools load.

    from maxact.export import export
    export("results/qwen3-8b", "smoothquant", "act_scales.pt")
    export("results/qwen3-8b", "input-scales", "scales.safetensors", policy="percentile:99.99", dtype="fp8-e4m3")
    export("results/qwen3-8b", "json", "quant.json")

Formats (docs/EXPORT.md):

* ``smoothquant``: ``torch.save`` of ``{module: float32 [in_features]}``, the per-input-channel max |x|
  of every linear input (SmoothQuant's act_scales);
* ``input-scales``: safetensors with one float32 ``<module>.input_scale`` per linear input (static
  per-tensor symmetric scale = clip / qmax) and ``<out>.json`` with clip, SQNR and saturated share;
* ``json``: every site's amax and SQNR under every policy and format.

Module names are the scan's site names without ``.input``: the module paths inside the base model
the scan hooked (``layers.0.self_attn.q_proj``); ``module_prefix`` (e.g. ``"model."``) turns them into
the full checkpoint's names.
"""

from __future__ import annotations

import os
from pathlib import Path

from maxact.export.formats import (ALL_DTYPES, ALL_POLICIES, DEFAULT_DTYPE, DEFAULT_POLICY, EXPORT_FORMATS,
                                   ExportError, LinearInput, ScaleRow, linear_inputs, load, parse_dtype,
                                   parse_policy, scale_row)
from maxact.export.input_scales import export_input_scales, sidecar_path
from maxact.export.json_export import export_json
from maxact.export.smoothquant import export_smoothquant

__all__ = ["export", "export_smoothquant", "export_input_scales", "export_json", "ExportError", "EXPORT_FORMATS",
           "ALL_DTYPES", "ALL_POLICIES", "LinearInput", "ScaleRow", "linear_inputs", "scale_row", "sidecar_path"]


def export(result: str | os.PathLike, fmt: str, out: str | os.PathLike, *, policy: str | None = None,
           dtype: str | None = None, module_prefix: str = "") -> list[Path]:
    """Export a scan result (its directory or ``stats.json``) in ``fmt``; return the files written.

    Args:
        result: the scan's output directory or its ``stats.json``.
        fmt: ``"smoothquant"``, ``"input-scales"`` or ``"json"``.
        out: the file to write (``input-scales`` also writes ``<out>.json``).
        policy: clip policy of ``input-scales``: ``max`` (default), ``percentile:P`` or ``mse``.
        dtype: target of ``input-scales``: ``int8`` (default, qmax 127) or ``fp8-e4m3`` (qmax 448).
        module_prefix: prepended to every module name (e.g. ``"model."`` for a ``*ForCausalLM``).

    Raises:
        ExportError: one-line message for a missing result, an unknown format / policy / dtype, a scan
            without linear-input sites (smoothquant, input-scales) or without channel maxima
            (smoothquant).
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"--format: unknown {fmt!r}; use {', '.join(EXPORT_FORMATS)}")
    # Validate every option before reading anything, so a typo fails fast.
    policy_name = parse_policy(policy if policy is not None else DEFAULT_POLICY)
    dtype_name = parse_dtype(dtype if dtype is not None else DEFAULT_DTYPE)
    checkpoint = load(result)
    if fmt == "smoothquant":
        return export_smoothquant(checkpoint, out, module_prefix=module_prefix)
    if fmt == "input-scales":
        return export_input_scales(checkpoint, out, policy=policy_name, dtype=dtype_name,
                                   module_prefix=module_prefix)
    return export_json(checkpoint, out, module_prefix=module_prefix)
