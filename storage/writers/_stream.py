"""Stream a dask array into a file in one pass, measuring as it goes.

Both float TIFF and NPY hold their pixels as one contiguous, uncompressed C-ordered block
at a known byte offset, so each dask chunk is converted and written straight into its
place: chunks are processed in any order and in parallel, each input chunk is read
exactly once, and memory stays at a few chunks whatever the size of the cube.

Blocks are written with ``os.pwrite`` at computed offsets (one write per contiguous run
of the block in the file), never through a memory map: a write to a full disk, a quota or
a read-only filesystem then fails with an ``OSError`` (``ENOSPC`` ...) the caller can
report and clean up after, where a store into a shared mapping of a sparse file would
kill the process with SIGBUS. The target is reopened by path inside each task (never
pickled as an open file), so process-based schedulers write to the file too.

A *converter* turns one chunk into the output dtype and returns per-``(leading..., band)``
statistics alongside (counts of clipped or overflowing values, largest error), which the
caller reduces.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from ..encodings import to_host

__all__ = ["FileTarget", "FloatCast", "stream_into"]

#: ``converter(chunk) -> (converted chunk, stats of shape chunk.shape[:-2] + (k,))``.
Converter = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class FileTarget:
    """A C-ordered array of ``shape``/``dtype`` stored at byte ``offset`` of the existing
    file ``path`` (laid out by the format's writer, pixels not yet written)."""

    path: str
    offset: int
    dtype: str
    shape: tuple[int, ...]

    def write(self, start: tuple[int, ...], block: np.ndarray) -> None:
        """Write ``block`` (already in ``dtype``) at index ``start`` of the array.

        One ``pwrite`` per contiguous run in the file: the trailing dims the block spans
        whole merge with the first one it does not (a full-width block is one run per
        band); a short write is continued, and ``ENOSPC`` raised if nothing more fits.
        """
        dtype = np.dtype(self.dtype)
        block = np.ascontiguousarray(block, dtype=dtype)
        if block.size == 0:
            return
        shape, bshape = self.shape, block.shape
        j = len(shape) - 1  # runs are contiguous over dims j..: full extent after j
        while j > 0 and bshape[j] == shape[j]:
            j -= 1
        strides = np.array(
            [int(np.prod(shape[d + 1 :], dtype=np.int64)) for d in range(len(shape))]
        )
        run = int(np.prod(bshape[j:], dtype=np.int64)) * dtype.itemsize
        base = self.offset + int(np.dot(start, strides)) * dtype.itemsize
        if j == 0:
            starts = np.zeros(1, dtype=np.int64)
        else:
            idx = np.indices(bshape[:j], dtype=np.int64).reshape(j, -1)
            starts = (strides[:j] @ idx) * dtype.itemsize
        data = block.reshape(-1).view(np.uint8).data  # a memoryview of the bytes
        fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            pwrite, pos = os.pwrite, 0
            for at in (starts + base).tolist():
                piece = data[pos : pos + run]
                if pwrite(fd, piece, at) != run:  # short write: finish it (or fail)
                    _pwrite_all(fd, piece, at)
                pos += run
        finally:
            os.close(fd)


def _pwrite_all(fd: int, buf: memoryview, offset: int) -> None:
    """Write all of ``buf`` at ``offset`` (rewriting what a short write already wrote)."""
    while buf:
        n = os.pwrite(fd, buf, offset)
        if n <= 0:  # a regular file only writes nothing when nothing more fits
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        buf, offset = buf[n:], offset + n


def _write_block(
    block: Any, *, target: FileTarget, convert: Converter, k: int, block_info: Any = None
) -> np.ndarray:
    assert block_info is not None
    start = tuple(int(a) for a, _ in block_info[0]["array-location"])
    out, stats = convert(to_host(block))
    target.write(start, out)  # the pages reach the file; Staging.commit fsyncs it once
    return np.asarray(stats, dtype=np.float64).reshape(np.shape(block)[:-2] + (1, 1, k))


def stream_into(
    data: da.Array, target: FileTarget, convert: Converter, *, k: int, token: str
) -> np.ndarray:
    """Write ``convert(chunk)`` for every chunk of ``data`` into ``target`` (one pass).

    Parameters
    ----------
    data
        ``(..., band, y, x)`` dask array; its shape must equal ``target.shape``.
    target
        Where the converted values go.
    convert
        See :data:`Converter`; must be picklable (a module-level function or a dataclass
        instance) so that process-based schedulers can run it.
    k
        Number of statistics per ``(..., band)``.
    token
        Task-name prefix (``cubepipe-export-...``).

    Returns
    -------
    numpy.ndarray
        Statistics of shape ``(..., band, y_chunks, x_chunks, k)``; reduce over axes
        ``(-3, -2)``.
    """
    if tuple(data.shape) != tuple(target.shape):
        raise ValueError(f"shape {data.shape} does not match the target {target.shape}")
    if data.size == 0:
        return np.zeros(data.shape[:-2] + (0, 0, k))
    ny, nx = len(data.chunks[-2]), len(data.chunks[-1])
    done = da.map_blocks(
        _write_block,
        data,
        target=target,
        convert=convert,
        k=k,
        new_axis=data.ndim,
        chunks=tuple(data.chunks[:-2]) + ((1,) * ny, (1,) * nx, (k,)),
        dtype=np.float64,
        meta=np.empty((0,) * (data.ndim + 1), dtype=np.float64),
        token=token,
    )
    return np.asarray(done.compute())


@dataclass(frozen=True)
class FloatCast:
    """Convert to ``dtype``; with ``measure``, stats ``[n_overflow, max_abs_error]`` per
    ``(..., band)`` in float64 (values finite before and not after; ``|x - cast(x)|``)."""

    dtype: str
    measure: bool = False

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(over="ignore", invalid="ignore"):
            out = x.astype(np.dtype(self.dtype))
        stats = np.zeros(x.shape[:-2] + (2,))
        if self.measure and x.size:
            x64, y64 = x.astype(np.float64), out.astype(np.float64)
            fin = np.isfinite(x64)
            over = fin & ~np.isfinite(y64)
            err = np.where(fin & ~over, np.abs(x64 - y64), 0.0)
            stats[..., 0] = over.sum(axis=(-2, -1))
            stats[..., 1] = err.max(axis=(-2, -1))
        return out, stats
