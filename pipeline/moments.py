"""One-pass per-band moments: a chunk / combine / aggregate reduction in float64.

Each chunk is summarised by a packed float64 array ``(band, 5)`` holding
``[n, mean, m2, min, max]`` of its valid values (not NaN, mask True), where
``m2 = sum((x - mean)**2)`` is the centred sum of squares *of that chunk*. Partials merge
pairwise with the parallel formulas of Chan, Golub & LeVeque::

    n = na + nb,  d = mb - ma,  mean = ma + d * nb / n,  m2 = m2a + m2b + d**2 * na * nb / n

so no sum of squares of raw values (which cancels catastrophically on data with an
offset) is ever formed. ``n`` is carried in float64, exact for counts below 2**53.

References
----------
T. F. Chan, G. H. Golub, R. J. LeVeque, "Algorithms for computing the sample variance:
analysis and recommendations", The American Statistician 37 (1983) 242-247.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from .backend import array_namespace

__all__ = [
    "M2",
    "MAX",
    "MEAN",
    "MIN",
    "N",
    "NFIELDS",
    "band_moments",
    "block_moments",
    "merge_moments",
]

N, MEAN, M2, MIN, MAX = range(5)
NFIELDS = 5


def block_moments(block: Any, valid: Any = None, *, band_axis: int) -> Any:
    """Moments ``(band, 5)`` of one chunk, in float64, ignoring NaN and ``~valid``."""
    xp = array_namespace(block)
    nb = block.shape[band_axis]
    x = xp.reshape(xp.moveaxis(block, band_axis, 0), (nb, -1))
    x = xp.astype(x, xp.float64)
    ok = ~xp.isnan(x)
    if valid is not None:
        v = xp.reshape(xp.moveaxis(valid, band_axis, 0), (nb, -1))
        ok = ok & xp.astype(v, xp.bool)
    n = xp.sum(xp.astype(ok, xp.float64), axis=1)
    safe_n = xp.where(n > 0, n, 1.0)
    mean = xp.sum(xp.where(ok, x, 0.0), axis=1) / safe_n
    dev = xp.where(ok, x - mean[:, None], 0.0)
    m2 = xp.sum(dev * dev, axis=1)
    lo = xp.min(xp.where(ok, x, xp.inf), axis=1) if x.shape[1] else xp.full(nb, xp.inf)
    hi = xp.max(xp.where(ok, x, -xp.inf), axis=1) if x.shape[1] else xp.full(nb, -xp.inf)
    return xp.stack([n, mean, m2, lo, hi], axis=1)


def merge_moments(a: Any, b: Any) -> Any:
    """Merge two packed partials ``(..., 5)`` (Chan et al.); empty partials are neutral."""
    xp = array_namespace(a, b)
    na, nb = a[..., N], b[..., N]
    n = na + nb
    safe_n = xp.where(n > 0, n, 1.0)
    d = b[..., MEAN] - a[..., MEAN]
    mean = a[..., MEAN] + d * (nb / safe_n)
    m2 = a[..., M2] + b[..., M2] + d * d * (na * nb / safe_n)
    lo = xp.minimum(a[..., MIN], b[..., MIN])
    hi = xp.maximum(a[..., MAX], b[..., MAX])
    return xp.stack([n, mean, m2, lo, hi], axis=-1)


def _partial(block: Any, *valid: Any, band_axis: int, ndim: int) -> Any:
    packed = block_moments(block, valid[0] if valid else None, band_axis=band_axis)
    # One cell per chunk along every reduced axis, then the packed field axis.
    shape = [1] * ndim + [NFIELDS]
    shape[band_axis] = packed.shape[0]
    xp = array_namespace(packed)
    return xp.reshape(packed, tuple(shape))


def _combine(p: Any, axis: tuple[int, ...], keepdims: bool = True) -> Any:
    """Merge partials laid out along ``axis`` (a concatenation of chunk cells)."""
    xp = array_namespace(p)
    # Bring the reduced axes to the front and fold them in one at a time.
    rest = [i for i in range(p.ndim) if i not in axis]
    q = xp.permute_dims(p, tuple(axis) + tuple(rest))
    q = xp.reshape(q, (-1,) + tuple(p.shape[i] for i in rest))
    acc = q[0]
    for i in range(1, q.shape[0]):
        acc = merge_moments(acc, q[i])
    if keepdims:
        shape = list(p.shape)
        for ax in axis:
            shape[ax] = 1
        acc = xp.reshape(acc, tuple(shape))
    return acc


def _aggregate(p: Any, axis: tuple[int, ...], keepdims: bool = False) -> Any:
    return _combine(p, axis, keepdims=keepdims)


def band_moments(
    data: da.Array,
    *,
    band_axis: int,
    valid: da.Array | None = None,
    split_every: int | None = None,
    name: str = "cubepipe-stats",
) -> da.Array:
    """Lazy packed moments ``(band, 5)`` of ``data`` over every axis but ``band_axis``.

    ``valid`` (same shape and chunks as ``data``, bool) marks pixels to include; NaN is
    always excluded. The result reads every chunk of ``data`` exactly once.
    """
    ndim = data.ndim
    args = [data] if valid is None else [data, valid]
    partial = da.map_blocks(
        _partial,
        *args,
        band_axis=band_axis,
        ndim=ndim,
        new_axis=ndim,
        chunks=tuple(c if i == band_axis else (1,) * len(c) for i, c in enumerate(data.chunks))
        + ((NFIELDS,),),
        dtype=np.float64,
        meta=data._meta.astype(np.float64).reshape((0,) * (ndim + 1)),
        token=f"{name}-partial",
    )
    reduced = tuple(i for i in range(ndim) if i != band_axis)
    return da.reduction(
        partial,
        chunk=_identity,
        combine=_combine,
        aggregate=_aggregate,
        axis=reduced,
        keepdims=False,
        dtype=np.float64,
        split_every=split_every,
        concatenate=True,
        name=name,
        meta=partial._meta.reshape((0, 0)),
    )


def _identity(p: Any, axis: tuple[int, ...], keepdims: bool = True) -> Any:
    return p
