"""Analyses of activation statistics: M and its carrier, layerwise trajectories, the Sun criterion,
pair ratios, exact quantization error from histograms, range flags, the stability of M, and MoE
expert coverage.

Every function takes :class:`maxact.results.Checkpoint` objects (``maxact.results.load_result``)
or plain arrays, and returns numbers, so the report, the model card and users share one API.
"""

from maxact.analysis.carriers import (
    M_EXCLUDED_COMPONENTS,
    Carrier,
    carrier_counts,
    component_peaks,
    global_max,
    m_sites,
    top_channels,
    top_entries,
    top_tokens,
)
from maxact.analysis.experts import DEFAULT_MIN_EXPERT_TOKENS, ExpertCoverage, ExpertLayer, expert_coverage
from maxact.analysis.families import FAMILY_ORDER, family_of, family_sort_key, is_moe
from maxact.analysis.pairs import Pair, load_pairs, pair_ratios
from maxact.analysis.quant import (
    DEFAULT_FORMATS,
    DEFAULT_POLICIES,
    FORMATS,
    QuantRow,
    clip_for_policy,
    get_format,
    mse_clip,
    normalize_policy,
    percentile_clip,
    quant_table,
    quantize,
    saturated_fraction,
    scale_for_policy,
    sqnr,
    underflow_fraction,
)
from maxact.analysis.ranges import (
    FP16_MAX,
    FP8_E4M3_MAX,
    FP8_E5M2_MAX,
    CheckpointRanges,
    SiteRange,
    checkpoint_ranges,
    flag_messages,
    site_range,
)
from maxact.analysis.stability import (
    BootstrapCI,
    SamplePeaks,
    StabilityRow,
    bootstrap_ci,
    default_sizes,
    proportional_allocation,
    sample_peaks,
    stability,
    subsample_indices,
)
from maxact.analysis.sun import SUN_T_RATIO, SUN_T_VAL, SunResult, site_passes, sun_criterion
from maxact.analysis.trajectories import (
    Trajectory,
    depth_profile,
    half_max_depth,
    layerwise_peaks,
    normalized_depth,
    peak_depth,
)

__all__ = [
    "M_EXCLUDED_COMPONENTS", "Carrier", "carrier_counts", "component_peaks", "global_max", "m_sites",
    "top_channels", "top_entries", "top_tokens",
    "DEFAULT_MIN_EXPERT_TOKENS", "ExpertCoverage", "ExpertLayer", "expert_coverage",
    "FAMILY_ORDER", "family_of", "family_sort_key", "is_moe",
    "Pair", "load_pairs", "pair_ratios",
    "DEFAULT_FORMATS", "DEFAULT_POLICIES", "FORMATS", "QuantRow", "clip_for_policy", "get_format", "mse_clip",
    "normalize_policy", "percentile_clip", "quant_table", "quantize", "saturated_fraction",
    "scale_for_policy", "sqnr", "underflow_fraction",
    "FP16_MAX", "FP8_E4M3_MAX", "FP8_E5M2_MAX", "CheckpointRanges", "SiteRange", "checkpoint_ranges",
    "flag_messages", "site_range",
    "BootstrapCI", "SamplePeaks", "StabilityRow", "bootstrap_ci", "default_sizes", "proportional_allocation",
    "sample_peaks", "stability", "subsample_indices",
    "SUN_T_RATIO", "SUN_T_VAL", "SunResult", "site_passes", "sun_criterion",
    "Trajectory", "depth_profile", "half_max_depth", "layerwise_peaks", "normalized_depth", "peak_depth",
]
