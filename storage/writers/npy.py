"""NumPy ``.npy``: the cube's dims as in the store (``(..., band, y, x)``), one pass.

:func:`numpy.lib.format.open_memmap` lays out the file and every chunk is written into
its place by :func:`~._stream.stream_into`; the cube is never held in memory.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np

from ._stream import Converter, MemmapTarget, stream_into

__all__ = ["write_npy"]


def write_npy(
    data: da.Array, path: Path, *, dtype: np.dtype, convert: Converter, k: int
) -> np.ndarray:
    """Write ``convert(data)`` to a new ``.npy`` at ``path``; returns the converter's
    statistics (see :func:`~._stream.stream_into`)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in data.shape)
    mm = np.lib.format.open_memmap(str(path), mode="w+", dtype=dtype, shape=shape)
    target = MemmapTarget(str(path), int(mm.offset), dtype.str, shape)
    del mm
    return stream_into(data, target, convert, k=k, token="cubepipe-export-npy")
