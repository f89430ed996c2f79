"""NumPy ``.npy``: the cube's dims as in the store (``(..., band, y, x)``), one pass.

The header (format 1.0, padded to 64 bytes) is written first, the file is extended to
its full size, and every chunk is written into its place by
:func:`~._stream.stream_into` (``pwrite``, no memory map); the cube is never held in
memory.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np

from ._stream import Converter, FileTarget, stream_into

__all__ = ["write_npy"]


def write_npy(
    data: da.Array, path: Path, *, dtype: np.dtype, convert: Converter, k: int
) -> np.ndarray:
    """Write ``convert(data)`` to a new ``.npy`` at ``path``; returns the converter's
    statistics (see :func:`~._stream.stream_into`)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in data.shape)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    with open(path, "xb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        offset = fh.tell()
        fh.truncate(offset + nbytes)  # sparse until written: no bytes for holes
    target = FileTarget(str(path), offset, dtype.str, shape)
    return stream_into(data, target, convert, k=k, token="cubepipe-export-npy")
