"""The HTML report of a store: statistics, PCA scree and components, reconstruction error,
provenance.
"""

from cubepipe.pipeline.report.build import band_histograms, build_report
from cubepipe.pipeline.report.write import write_report

__all__ = [
    "band_histograms",
    "build_report",
    "write_report",
]
