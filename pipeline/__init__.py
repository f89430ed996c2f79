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

Every name is imported on first use (PEP 562), so that ``import cubepipe.pipeline`` --
which ``cubepipe --help`` does -- imports neither dask.array nor xarray nor zarr. The
accessor is registered all the same: ``xarray.Dataset.cubepipe`` is set when xarray is
imported (now, or later), and imports the operations on first use.

:class:`CubeDataset` (a PyTorch Dataset over a store, :mod:`cubepipe.pipeline.torch`,
the ``torch`` extra) is imported on first use: importing this package never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from cubepipe.storage import __version__
from cubepipe.storage._lazy import lazy_attribute as _lazy_attribute

if TYPE_CHECKING:  # what the lazy names below are, for type checkers
    from cubepipe.pipeline.compression.api import (
        Compressed,
        compress,
        load_model,
        prepare_compress,
        reconstruct,
    )
    from cubepipe.pipeline.stats.fit import fit_stats
    from cubepipe.pipeline.stats.standardize import destandardize, standardize

    from .accessor import CubepipeAccessor
    from .backend import Device, array_namespace, resolve_device, to_device, to_host
    from .filters import filter_cube
    from .synthetic import make_cube
    from .torch import CubeDataset  # noqa: F401  (not in __all__: the torch extra)

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

#: Public name -> the module that defines it, imported on first access.
_LAZY = {
    "Compressed": "cubepipe.pipeline.compression.api",
    "compress": "cubepipe.pipeline.compression.api",
    "load_model": "cubepipe.pipeline.compression.api",
    "prepare_compress": "cubepipe.pipeline.compression.api",
    "reconstruct": "cubepipe.pipeline.compression.api",
    "fit_stats": "cubepipe.pipeline.stats.fit",
    "standardize": "cubepipe.pipeline.stats.standardize",
    "destandardize": "cubepipe.pipeline.stats.standardize",
    "CubepipeAccessor": "cubepipe.pipeline.accessor",
    "Device": "cubepipe.pipeline.backend",
    "array_namespace": "cubepipe.pipeline.backend",
    "resolve_device": "cubepipe.pipeline.backend",
    "to_device": "cubepipe.pipeline.backend",
    "to_host": "cubepipe.pipeline.backend",
    "filter_cube": "cubepipe.pipeline.filters",
    "make_cube": "cubepipe.pipeline.synthetic",
}


def __getattr__(name: str) -> Any:
    if name == "CubeDataset":  # the torch extra: looked up each time, never kept here
        from .torch import CubeDataset  # noqa: PLC0415  (optional dependency, on use)

        return CubeDataset
    return _lazy_attribute(__name__, _LAZY, globals(), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# -- the ds.cubepipe accessor, registered without importing xarray ------------------------

_ACCESSOR = "cubepipe.pipeline.accessor"


class _AccessorOnFirstUse:
    """Stands in for ``Dataset.cubepipe`` until first used: then removes itself and imports
    :mod:`cubepipe.pipeline.accessor`, whose import registers the real accessor (so that
    xarray sees no attribute to override and warns about nothing)."""

    def __get__(self, obj: Any, cls: type) -> Any:
        if cls.__dict__.get("cubepipe") is self:
            delattr(cls, "cubepipe")
        importlib.import_module(_ACCESSOR)
        real = cls.__dict__.get("cubepipe")
        if real is None:  # asked while the accessor module is being imported
            raise AttributeError("cubepipe")
        return real.__get__(obj, cls)


def _install(xarray: ModuleType) -> None:
    if _ACCESSOR not in sys.modules and "cubepipe" not in xarray.Dataset.__dict__:
        xarray.Dataset.cubepipe = _AccessorOnFirstUse()


class _ThenInstall:
    """The loader of xarray, wrapped: runs it, then :func:`_install`."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _finder.done = True
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        _install(module)

    def __getattr__(self, name: str) -> Any:  # resource readers etc.: the real loader's
        return getattr(self._loader, name)


class _WhenXarrayImports:
    """A one-shot import hook: when ``xarray`` is imported, :func:`_install` runs."""

    done = False
    busy = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "xarray" or self.done or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(fullname)  # by the other finders
        finally:
            self.busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenInstall(spec.loader)  # type: ignore[assignment]
        return spec


_finder = _WhenXarrayImports()
if "xarray" in sys.modules:
    _install(sys.modules["xarray"])
else:
    sys.meta_path.insert(0, _finder)
