"""Readers: every input format opens as a lazy, dask-backed cube Dataset (see base.py)."""

from .base import READERS, ReaderSpec, detect_format, open_source, register

__all__ = ["READERS", "ReaderSpec", "detect_format", "open_source", "register"]
