"""Chunk kernels of PCA projection and reconstruction error (NumPy or CuPy blocks).

They walk a chunk's pixel rows ``(band, pixels)`` in cache-sized strips with float64
buffers made once per chunk, so memory does not grow with the chunk and the few
element-wise passes per strip run in cache. :mod:`cubepipe.pipeline.pca` maps them over
dask chunks.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from .backend import array_namespace
from .moments import strip_pixels


def _as_rows(xp: Any, a: Any, axis: int) -> Any:
    """``(..., B, ...)`` -> ``(B, N)`` (a view when ``a`` is contiguous)."""
    return xp.reshape(xp.moveaxis(a, axis, 0), (a.shape[axis], -1))


def _from_rows(xp: Any, rows: Any, like_shape: tuple[int, ...], axis: int) -> Any:
    shape = (rows.shape[0],) + tuple(n for i, n in enumerate(like_shape) if i != axis)
    return xp.moveaxis(xp.reshape(rows, shape), 0, axis)


def _encode_rows(
    xp: Any, x: Any, v: Any, m: dict[str, np.ndarray], *, metrics: bool
) -> tuple[Any, list[float]]:
    """Scores ``(K, N)`` float32 of pixel rows ``x (B, N)`` and, if ``metrics``, the error
    partials ``[sse, n_values, sam_sum, n_pixels, min, max]`` of their reconstruction from
    those float32 scores. Strip by strip: every float64 temporary is small enough to stay
    in cache, and the centred data ``u = x - mean`` is formed once for both; the scale and
    whitening are folded into the small matrices.
    """
    scale = m["scale"][None, :]
    w = xp.asarray(m["w"] / m["factor"][:, None] / scale)  # (K, B): u -> scores
    wt = xp.asarray((m["w"] * m["factor"][:, None] * scale).T)  # (B, K): scores -> u
    mean = xp.asarray(m["mean"])[:, None]
    out = xp.empty((w.shape[0], x.shape[1]), dtype=xp.float32)
    errors = _Errors(xp, x, wt) if metrics else None
    for a, xd, xx, u, ok, every in _centred_strips(xp, x, mean, valid=v):
        s = xp.astype(w @ u, xp.float32)
        if not every:
            s = xp.where(ok[None, :], s, xp.asarray(xp.nan, dtype=xp.float32))
        out[:, a : a + s.shape[1]] = s
        if errors is not None:
            errors.add(a, xd, xx, u, s, ok, every)
    return out, ([] if errors is None else errors.partial())


def _centred_strips(
    xp: Any, x: Any, mean: Any, *, valid: Any = None, scores: Any = None
) -> Iterator[tuple[int, Any, Any, Any, Any, bool]]:
    """Walk the pixel rows ``x (B, N)`` in cache-sized strips, yielding ``(start, xd, xx,
    u, ok, every)``: the strip in float64, its per-pixel ``|x|^2``, the centred
    ``u = x - mean`` (0 at invalid pixels), which pixels are valid (no NaN in any band,
    ``valid`` all True, no NaN in ``scores``) and whether all are. The buffers are made
    once per chunk (a fresh large temporary per strip costs page faults that can exceed
    the arithmetic) and reused: use each strip before asking for the next.
    """
    step = strip_pixels(x.shape[0])
    buf = xp.empty((2, x.shape[0], max(1, min(step, x.shape[1]))), dtype=xp.float64)
    for a in range(0, x.shape[1], step):
        n = min(step, x.shape[1] - a)
        xd = buf[0, :, :n]
        xd[...] = x[:, a : a + n]
        xx = _colsum(xp, xd, xd)  # NaN in any band makes the pixel's |x|^2 NaN
        ok = ~xp.isnan(xx)
        if valid is not None:
            ok = ok & xp.all(xp.astype(valid[:, a : a + n], xp.bool), axis=0)
        if scores is not None:
            ok = ok & ~xp.any(xp.isnan(scores[:, a : a + n]), axis=0)
        every = bool(xp.all(ok))
        u = buf[1, :, :n]
        u[...] = xd
        u -= mean
        if not every:
            u = xp.where(ok[None, :], u, 0.0)
        yield a, xd, xx, u, ok, every


def _module(a: Any) -> Any:
    """NumPy or CuPy itself (for ``out=`` arguments the array-API wrappers lack)."""
    return (
        np
        if isinstance(a, np.ndarray)
        else importlib.import_module(type(a).__module__.split(".")[0])
    )


def _colsum(xp: Any, a: Any, b: Any) -> Any:
    """Per-column ``sum(a * b)`` over rows (NumPy: one einsum pass, no temporary)."""
    if isinstance(a, np.ndarray):
        return np.einsum("bn,bn->n", a, b)
    return xp.sum(a * b, axis=0)


class _Errors:
    """Reconstruction-error partials of one chunk ``x (B, N)``, gathered strip by strip.

    Per pixel it keeps ``|x|^2``, ``x . e`` and ``|e|^2`` where ``e = u - W^T s`` is the
    error in the centred space (so it does not cancel against an offset; ``wt`` maps
    the stored scores back to ``u``); :meth:`partial` turns them, once per chunk, into
    ``[sse, n_values, sam_sum, n_pixels, min, max]``. The spectral angle uses
    ``x . x_hat = |x|^2 - x . e`` and ``|x_hat|^2 = |x|^2 - 2 x . e + |e|^2``.
    """

    def __init__(self, xp: Any, x: Any, wt: Any) -> None:
        self.xp, self.x, self.wt = xp, x, wt
        width = max(1, min(strip_pixels(x.shape[0]), x.shape[1]))
        self.work = xp.empty((x.shape[0], width), dtype=xp.float64)  # e, one strip
        n = x.shape[1]
        self.xx = xp.zeros(n, dtype=xp.float64)
        self.xe = xp.zeros(n, dtype=xp.float64)
        self.ee = xp.zeros(n, dtype=xp.float64)
        self.ok = xp.zeros(n, dtype=xp.bool)

    def add(self, a: int, xd: Any, xx: Any, u: Any, s: Any, ok: Any, every: bool) -> None:
        """One strip from pixel ``a``: ``xd`` the float64 data, ``xx`` its ``|x|^2``,
        ``u`` the centred data (0 where not ``ok``), ``s`` the stored float32 scores."""
        xp = self.xp
        b = a + xd.shape[1]
        if not every:
            s = xp.where(ok[None, :], s, 0.0)
            xd = xp.where(ok[None, :], xd, 0.0)
            xx = xp.where(ok, xx, 0.0)
        e = self.work[:, : xd.shape[1]]
        _module(e).matmul(self.wt, xp.astype(s, xp.float64), out=e)
        e *= -1.0
        e += u
        self.xx[a:b] = xx
        self.xe[a:b] = _colsum(xp, xd, e)
        self.ee[a:b] = _colsum(xp, e, e)
        self.ok[a:b] = ok

    def partial(self) -> list[float]:
        xp, ok = self.xp, self.ok
        npix = int(xp.sum(xp.astype(ok, xp.int64)))
        if npix == 0:
            return [0.0, 0.0, 0.0, 0.0, float("inf"), float("-inf")]
        sse, sam, nsam = error_sums(xp, self.xx, self.xe, self.ee, ok)
        if npix == ok.shape[0]:  # every pixel valid: no NaN anywhere
            lo, hi = xp.min(self.x), xp.max(self.x)
        else:
            lo = xp.min(xp.where(ok[None, :], self.x, xp.inf))
            hi = xp.max(xp.where(ok[None, :], self.x, -xp.inf))
        return [sse, float(npix * self.x.shape[0]), sam, nsam, float(lo), float(hi)]


def error_sums(xp: Any, xx: Any, xe: Any, ee: Any, ok: Any) -> tuple[float, float, float]:
    """``(sum |e|^2, sum of spectral angles, number of angles)`` over the ``ok`` pixels,
    from each pixel's ``|x|^2``, ``x . e`` and ``|e|^2`` (``e = x - x_hat``), using
    ``x . x_hat = |x|^2 - x . e`` and ``|x_hat|^2 = |x|^2 - 2 x . e + |e|^2``. A pixel
    whose spectrum or reconstruction is all zero has no angle. One definition for every
    compression method, so their errors compare."""
    nx = xp.sqrt(xx)
    ny = xp.sqrt(xp.clip(xx - 2 * xe + ee, 0.0, None))
    good = ok & (nx > 0) & (ny > 0)
    cos = xp.clip((xx - xe) / xp.where(good, nx * ny, 1.0), -1.0, 1.0)
    return (
        float(xp.sum(xp.where(ok, ee, 0.0))),
        float(xp.sum(xp.where(good, xp.acos(cos), 0.0))),
        float(xp.sum(xp.astype(good, xp.float64))),
    )


def project_block(block: Any, *valid: Any, m: dict[str, np.ndarray], axis: int) -> Any:
    xp = array_namespace(block)
    v = _as_rows(xp, valid[0], axis) if valid else None
    out, _ = _encode_rows(xp, _as_rows(xp, block, axis), v, m, metrics=False)
    return _from_rows(xp, out, block.shape, axis)


def encode_block(
    block: Any, *valid: Any, m: dict[str, np.ndarray], axis: int, ndim: int
) -> tuple[Any, Any]:
    """Scores and error partials of one chunk, from one look at it (see
    :func:`pca_encode`): a pair, split by :func:`pair_first` and :func:`pair_second`."""
    xp = array_namespace(block)
    v = _as_rows(xp, valid[0], axis) if valid else None
    out, acc = _encode_rows(xp, _as_rows(xp, block, axis), v, m, metrics=True)
    partial = xp.reshape(xp.asarray(acc, dtype=xp.float64), (1,) * ndim + (6,))
    return _from_rows(xp, out, block.shape, axis), partial


def pair_first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def pair_second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


def reconstruct_block(scores: Any, *, m: dict[str, np.ndarray], axis: int) -> Any:
    xp = array_namespace(scores)
    s = _as_rows(xp, scores, axis)
    wt = xp.asarray((m["w"] * m["factor"][:, None]).T)  # (B, K)
    mean, scale = xp.asarray(m["mean"])[:, None], xp.asarray(m["scale"])[:, None]
    out = xp.empty((wt.shape[0], s.shape[1]), dtype=xp.float32)
    step = strip_pixels(wt.shape[0])
    for a in range(0, s.shape[1], step):
        xhat = wt @ xp.astype(s[:, a : a + step], xp.float64)
        xhat *= scale
        xhat += mean
        out[:, a : a + step] = xp.astype(xhat, xp.float32)
    return _from_rows(xp, out, scores.shape, axis)


def metric_block(x: Any, s: Any, *, m: dict[str, np.ndarray], axis: int, ndim: int) -> Any:
    """Error partials of one chunk reconstructed from the scores ``s``, strip by strip,
    without rebuilding the whole chunk (see :class:`_Errors`)."""
    xp = array_namespace(x)
    rows = _as_rows(xp, x, axis)
    srows = _as_rows(xp, s, axis)
    wt = xp.asarray((m["w"] * m["factor"][:, None] * m["scale"][None, :]).T)  # (B, K)
    mean = xp.asarray(m["mean"])[:, None]
    errors = _Errors(xp, rows, wt)
    for a, xd, xx, u, ok, every in _centred_strips(xp, rows, mean, scores=srows):
        errors.add(a, xd, xx, u, srows[:, a : a + xd.shape[1]], ok, every)
    return xp.reshape(xp.asarray(errors.partial(), dtype=xp.float64), (1,) * ndim + (6,))
