"""cubepipe.storage: how cubes live on disk.

Opening and writing zarr v3 cube stores (the store contract of DESIGN.md), encodings,
readers (ingest) and writers (export). No mathematics lives here, and this package never
imports :mod:`cubepipe.pipeline`.
"""

from ._version import __version__
from .dataset import open_images
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
from .info import describe
from .layout import CORE_DIMS, LEADING_DIMS, default_chunks, parse_chunks
from .location import set_storage_options, storage_options
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
