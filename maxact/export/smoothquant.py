"""``--format smoothquant``: per-input-channel max |x| of every linear input, in the act_scales layout.

SmoothQuant's calibration script saves ``torch.save({module_name: Tensor[in_features]})``: for each
``nn.Linear`` the maximum of |x| over all calibration tokens, per input channel, as float32; its
smoothing step reads those tensors by module name. A maxact scan with ``--sites linear-inputs`` keeps
exactly these maxima (sidecar ``{site}/channel_abs_max``), so no re-run of the model is needed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from maxact.export.formats import ExportError, LinearInput, atomic_write, linear_inputs
from maxact.results import Checkpoint

logger = logging.getLogger(__name__)

CHANNEL_HINT = "scan with --sites linear-inputs and without --no-channels"


def channel_maxima(sites: list[LinearInput], source: Path) -> dict[str, np.ndarray]:
    """module name -> float32 [in_features] max |x| per input channel, for the sites that saw tokens.

    Raises ExportError when the scan kept no channel maxima. Sites whose hook never fired are left
    out with a warning: their all-zero maxima would make a smoothing step divide by zero.
    """
    missing = [s.site.name for s in sites if s.site.channel_abs_max is None]
    if missing:
        raise ExportError(f"{source}: no per-channel maxima for {len(missing)} linear input(s) "
                          f"(e.g. {missing[0]}); {CHANNEL_HINT}")
    out: dict[str, np.ndarray] = {}
    for s in sites:
        values = np.asarray(s.site.channel_abs_max, dtype=np.float32)
        if s.count == 0:
            logger.warning("%s: never received a token; left out of the act scales", s.module)
            continue
        if s.site.num_channels is not None and values.shape != (int(s.site.num_channels),):
            raise ExportError(f"{source}: {s.site.name}/channel_abs_max has shape {values.shape}, "
                              f"expected ({s.site.num_channels},)")
        if not np.isfinite(values).all():
            logger.warning("%s: %d channel(s) reached inf", s.module, int(np.isinf(values).sum()))
        out[s.module] = values
    if not out:
        raise ExportError(f"{source}: no linear input received a token; nothing to export")
    return out


def export_smoothquant(checkpoint: Checkpoint, out: str | Path, *, module_prefix: str = "") -> list[Path]:
    """Write ``out`` (``torch.save`` of ``{module: float32 tensor [in_features]}``); return the paths."""
    import torch

    maxima = channel_maxima(linear_inputs(checkpoint, module_prefix), checkpoint.path)
    scales = {name: torch.from_numpy(np.array(v, dtype=np.float32, copy=True)) for name, v in maxima.items()}
    atomic_write(Path(out), lambda tmp: torch.save(scales, tmp))
    peak = max(maxima.items(), key=lambda kv: float(kv[1].max()) if kv[1].size else -math.inf)
    logger.info("act scales of %d modules; largest channel max %g at %s", len(maxima), float(peak[1].max()), peak[0])
    return [Path(out)]
