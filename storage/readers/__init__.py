"""Readers: every input format opens as a lazy, dask-backed cube Dataset (see base.py).

Importing this package registers every reader in :data:`READERS`.
"""

from . import envi, image, netcdf, npy, tiff, video  # noqa: F401  (each registers its reader)
from .base import READERS, ReaderSpec, check_input, detect_format, open_source, register

__all__ = ["READERS", "ReaderSpec", "check_input", "detect_format", "open_source", "register"]
