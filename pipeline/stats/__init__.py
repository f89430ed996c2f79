"""Statistics and standardization: one-pass float64 moments (Chan merges), per-band
statistics, z-score/min-max standardization and back.
"""

from cubepipe.pipeline.stats.fit import (
    STAT_VARS,
    fit_stats,
    stats_from_json,
    stats_from_packed,
    stats_to_json,
    take_stats,
)
from cubepipe.pipeline.stats.standardize import (
    METHODS,
    destandardize,
    iter_standardized,
    standardize,
    transform_params,
)

__all__ = [
    "METHODS",
    "STAT_VARS",
    "destandardize",
    "fit_stats",
    "iter_standardized",
    "standardize",
    "stats_from_json",
    "stats_from_packed",
    "stats_to_json",
    "take_stats",
    "transform_params",
]
