"""``ds.cubepipe``: cubepipe's operations as methods of an xarray Dataset.

Registered when :mod:`cubepipe.pipeline` is imported. Each method is one call of the
library function of the same concept, with the Dataset as its first argument::

    import xarray as xr
    import cubepipe.pipeline  # noqa: F401  (registers ds.cubepipe)

    ds = xr.open_zarr("cube.zarr")
    out = ds.cubepipe.compress(components=5)
    out.cubepipe.reconstruct().cubepipe.to_store("reconstructed.zarr")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xarray as xr

from cubepipe.pipeline.backend import to_host
from cubepipe.pipeline.compression.api import compress, reconstruct
from cubepipe.pipeline.stats.fit import fit_stats
from cubepipe.pipeline.stats.standardize import destandardize, standardize
from cubepipe.storage import write_cube

from .filters import filter_cube

__all__ = ["CubepipeAccessor"]


@xr.register_dataset_accessor("cubepipe")
class CubepipeAccessor:
    """The operations of :mod:`cubepipe.pipeline` on this Dataset (lazy, dask-backed)."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def stats(self, **kwargs: Any) -> xr.Dataset:
        """Per-band statistics: :func:`~cubepipe.pipeline.stats.fit.fit_stats`."""
        return fit_stats(self._ds, **kwargs)

    def standardize(self, stats: xr.Dataset | None = None, **kwargs: Any) -> xr.Dataset:
        """Per-band z-scores or min-max: :func:`~cubepipe.pipeline.stats.standardize.standardize`."""
        return standardize(self._ds, stats, **kwargs)

    def destandardize(self, **kwargs: Any) -> xr.Dataset:
        """Undo :meth:`standardize`: :func:`~cubepipe.pipeline.stats.standardize.destandardize`."""
        return destandardize(self._ds, **kwargs)

    def compress(self, **kwargs: Any) -> xr.Dataset:
        """Scores and model: :func:`~cubepipe.pipeline.compression.api.compress`."""
        return compress(self._ds, **kwargs)

    def reconstruct(self, **kwargs: Any) -> xr.Dataset:
        """Bands from scores: :func:`~cubepipe.pipeline.compression.api.reconstruct`."""
        return reconstruct(self._ds, **kwargs)

    def filter(self, kernel: str, **kwargs: Any) -> xr.Dataset:
        """Convolution or frequency filter: :func:`~cubepipe.pipeline.filters.filter_cube`."""
        return filter_cube(self._ds, kernel, **kwargs)

    def to_store(self, path: str | Path, **kwargs: Any) -> Path:
        """Write a cube store: :func:`~cubepipe.storage.write_cube` (chunks computed on
        the GPU come to the host as they are written)."""
        return write_cube(to_host(self._ds), path, **kwargs)
