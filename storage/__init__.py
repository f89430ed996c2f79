"""cubepipe.storage: how cubes live on disk.

Opening and writing zarr v3 cube stores (the store contract of DESIGN.md), encodings,
readers (ingest) and writers (export). No mathematics lives here, and this package never
imports :mod:`cubepipe.pipeline`.

The errors, the version, chunk layouts and storage options import at once (they need
only the standard library); the names that need zarr, xarray or dask (``open_cube``,
``write_cube``, ``describe``, ...) import their module on first use (PEP 562), so that
``cubepipe --help`` starts without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._lazy import lazy_attribute as _lazy_attribute
from ._version import __version__
from .errors import (
    CubepipeError,
    CubepipeWarning,
    DeviceError,
    FileSystemError,
    FormatError,
    IncompleteStoreError,
    InputError,
    InvalidStoreError,
    MissingDependencyError,
    NonFiniteError,
    StepError,
    StoreExistsError,
    StoreLockedError,
    StoreNotFoundError,
)
from .layout import CORE_DIMS, LEADING_DIMS, default_chunks, parse_chunks
from .location import set_storage_options, storage_options

if TYPE_CHECKING:  # what the lazy names below are, for type checkers
    from .dataset import open_images
    from .info import describe
    from .store import ATTR, history, is_complete, open_cube, read_attrs, store_state, write_cube

__all__ = [
    "ATTR",
    "CORE_DIMS",
    "LEADING_DIMS",
    "CubepipeError",
    "CubepipeWarning",
    "DeviceError",
    "FileSystemError",
    "FormatError",
    "IncompleteStoreError",
    "InputError",
    "InvalidStoreError",
    "MissingDependencyError",
    "NonFiniteError",
    "StepError",
    "StoreExistsError",
    "StoreLockedError",
    "StoreNotFoundError",
    "__version__",
    "default_chunks",
    "describe",
    "history",
    "is_complete",
    "open_cube",
    "open_images",
    "parse_chunks",
    "read_attrs",
    "set_storage_options",
    "storage_options",
    "store_state",
    "write_cube",
]

#: Public name -> the submodule that defines it, imported on first access.
_LAZY = {
    "ATTR": ".store",
    "history": ".store",
    "is_complete": ".store",
    "open_cube": ".store",
    "read_attrs": ".store",
    "store_state": ".store",
    "write_cube": ".store",
    "describe": ".info",
    "open_images": ".dataset",
}


def __getattr__(name: str) -> Any:
    return _lazy_attribute(__name__, _LAZY, globals(), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
