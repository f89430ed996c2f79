"""Stream a dask array into a memory-mapped file in one pass, measuring as it goes.

Both float TIFF and NPY hold their pixels as one contiguous, uncompressed block at a known
byte offset, so each dask chunk is converted and written straight into its place: chunks
are processed in any order and in parallel, each input chunk is read exactly once, and
memory stays at a few chunks whatever the size of the cube. The target is reopened by
path inside each task (never pickled as an array), so process-based schedulers write to
the file too.

A *converter* turns one chunk into the output dtype and returns per-``(leading..., band)``
statistics alongside (counts of clipped or overflowing values, largest error), which the
caller reduces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from ..encodings import to_host

__all__ = ["FloatCast", "MemmapTarget", "stream_into"]

#: ``converter(chunk) -> (converted chunk, stats of shape chunk.shape[:-2] + (k,))``.
Converter = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class MemmapTarget:
    """A C-ordered array of ``shape``/``dtype`` stored at byte ``offset`` of ``path``."""

    path: str
    offset: int
    dtype: str
    shape: tuple[int, ...]

    def open(self) -> np.memmap:
        return np.memmap(
            self.path, dtype=np.dtype(self.dtype), mode="r+", offset=self.offset, shape=self.shape
        )


def _write_block(
    block: Any, *, target: MemmapTarget, convert: Converter, k: int, block_info: Any = None
) -> np.ndarray:
    assert block_info is not None
    region = tuple(slice(a, b) for a, b in block_info[0]["array-location"])
    out, stats = convert(to_host(block))
    mm = target.open()
    mm[region] = out
    del mm  # a shared mapping: the pages reach the file; Staging.commit fsyncs it once
    return np.asarray(stats, dtype=np.float64).reshape(np.shape(block)[:-2] + (1, 1, k))


def stream_into(
    data: da.Array, target: MemmapTarget, convert: Converter, *, k: int, token: str
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
