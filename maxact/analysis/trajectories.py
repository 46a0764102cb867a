"""Layerwise peak |x| per component against normalized depth, and where the hidden peak forms.

Normalized depth of layer i is i / (L - 1), L the number of decoder layers, so every checkpoint
spans [0, 1]. ``half_max_depth`` gives one number for the paper's two patterns: a jump-and-plateau
trajectory reaches half its maximum early, a gradual one late.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maxact.results import Checkpoint


@dataclass(frozen=True)
class Trajectory:
    """Peak |x| of one component at each layer that has it."""

    checkpoint: str
    component: str
    layers: np.ndarray  # int, ascending
    depth: np.ndarray  # layers / (L - 1)
    peaks: np.ndarray  # float64 abs max per layer
    sites: tuple[str, ...]


def normalized_depth(layers: np.ndarray, num_layers: int) -> np.ndarray:
    """``layer / (L - 1)``; a single-layer model sits at depth 0."""
    layers = np.asarray(layers, dtype=np.float64)
    return layers / (num_layers - 1) if num_layers > 1 else np.zeros_like(layers)


def layerwise_peaks(ckpt: Checkpoint, component: str = "hidden") -> Trajectory:
    """Per-layer peak |x| of ``component`` (empty arrays when the checkpoint has none)."""
    by_layer: dict[int, tuple[float, str]] = {}
    for site in ckpt.sites_of(component):
        if site.layer is None or np.isnan(site.abs_max):  # NaN: a site that never fired
            continue
        prev = by_layer.get(site.layer)
        # Several sites of one component in a layer (e.g. two router outputs): keep the largest.
        if prev is None or site.abs_max > prev[0]:
            by_layer[site.layer] = (float(site.abs_max), site.name)
    layers = np.array(sorted(by_layer), dtype=np.int64)
    peaks = np.array([by_layer[i][0] for i in layers], dtype=np.float64)
    return Trajectory(
        checkpoint=ckpt.name,
        component=component,
        layers=layers,
        depth=normalized_depth(layers, ckpt.depth_layers()),
        peaks=peaks,
        sites=tuple(by_layer[i][1] for i in layers),
    )


def half_max_depth(ckpt: Checkpoint, component: str = "hidden", fraction: float = 0.5) -> float:
    """Normalized depth of the first layer whose peak reaches ``fraction`` of the layerwise maximum.

    NaN when the component has no layer sites.
    """
    traj = layerwise_peaks(ckpt, component)
    if traj.peaks.size == 0:
        return float("nan")
    target = fraction * traj.peaks.max()
    first = int(np.argmax(traj.peaks >= target))
    return float(traj.depth[first])


def peak_depth(ckpt: Checkpoint, component: str = "hidden") -> float:
    """Normalized depth of the first layer holding the component's maximum (NaN if none)."""
    traj = layerwise_peaks(ckpt, component)
    if traj.peaks.size == 0:
        return float("nan")
    return float(traj.depth[int(np.argmax(traj.peaks))])


def depth_profile(ckpt: Checkpoint, grid: np.ndarray, component: str = "hidden") -> np.ndarray:
    """log10 of the layerwise peak resampled onto a normalized-depth grid (linear in log space).

    Used for the heatmap, whose rows must share one depth axis although layer counts differ.
    Peaks of 0 are floored at the smallest positive peak. All-NaN without layer sites.
    """
    traj = layerwise_peaks(ckpt, component)
    grid = np.asarray(grid, dtype=np.float64)
    if traj.peaks.size == 0:
        return np.full(grid.shape, np.nan)
    positive = traj.peaks[traj.peaks > 0]
    floor = positive.min() if positive.size else 1.0
    logs = np.log10(np.maximum(traj.peaks, floor))
    if traj.peaks.size == 1:
        return np.full(grid.shape, logs[0])
    return np.interp(grid, traj.depth, logs)
