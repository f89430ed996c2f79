"""cubepipe.pipeline: what is computed.

Device backends (CPU/GPU), statistics, standardization, compression, filtering and the
command line. Functions take and return xarray objects backed by dask arrays; stores are
opened and written only through :mod:`cubepipe.storage`.

The operations, each one function with the Dataset first and options keyword-only:

- :func:`fit_stats`: per-band count, mean, std, min, max (one pass).
- :func:`standardize`, :func:`destandardize`: per-band z-score or min-max, and back.
- :func:`compress`, :func:`reconstruct`, :func:`load_model`: PCA or autoencoder scores
  over ``band`` and the bands rebuilt from them (:func:`prepare_compress` keeps the
  reconstruction error beside the output, to measure it in the same pass as the write).
- :func:`filter_cube`: spatial or spectral convolution and frequency filters.

Importing this package registers the ``ds.cubepipe`` Dataset accessor
(:class:`~cubepipe.pipeline.accessor.CubepipeAccessor`) with the same operations.

:class:`CubeDataset` (a PyTorch Dataset over a store, :mod:`cubepipe.pipeline.torch`,
the ``torch`` extra) is imported on first use: importing this package never imports torch.
"""

from typing import Any

from cubepipe.pipeline.compression.api import (
    Compressed,
    compress,
    load_model,
    prepare_compress,
    reconstruct,
)
from cubepipe.pipeline.stats.fit import fit_stats
from cubepipe.pipeline.stats.standardize import destandardize, standardize
from cubepipe.storage import __version__

from .accessor import CubepipeAccessor
from .backend import Device, array_namespace, resolve_device, to_device, to_host
from .filters import filter_cube
from .synthetic import make_cube

__all__ = [
    "Compressed",
    "CubepipeAccessor",
    "Device",
    "__version__",
    "array_namespace",
    "compress",
    "destandardize",
    "filter_cube",
    "fit_stats",
    "load_model",
    "make_cube",
    "prepare_compress",
    "reconstruct",
    "resolve_device",
    "standardize",
    "to_device",
    "to_host",
]


def __getattr__(name: str) -> Any:
    # Lazily, so that `import cubepipe.pipeline` never imports torch (nor needs it).
    if name == "CubeDataset":
        from .torch import CubeDataset  # noqa: PLC0415  (optional dependency, on use)

        return CubeDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
