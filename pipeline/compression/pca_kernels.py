"""Chunk kernels of PCA projection and reconstruction error (NumPy or CuPy blocks).

They walk a chunk's pixel rows ``(band, pixels)`` in strips of float64 (~1 MiB,
:data:`ENCODE_STRIP`, for the encoder; ~4 MiB,
:data:`~cubepipe.pipeline.stats.moments.WIDE_STRIP`, elsewhere) with buffers made once per
chunk, so memory does not grow with the chunk, the element-wise passes of a strip mostly
hit the cache, and few enough NumPy calls hold the GIL that dask threads run in parallel.
:mod:`cubepipe.pipeline.compression.pca` maps them over dask chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from cubepipe.pipeline.backend import (
    array_module,
    array_namespace,
    device_constant,
    device_task,
    is_device_array,
    matmul,
)
from cubepipe.pipeline.stats.moments import WIDE_STRIP, strip_pixels


def _as_rows(xp: Any, a: Any, axis: int) -> Any:
    """``(..., B, ...)`` -> ``(B, N)`` (a view when ``a`` is contiguous)."""
    return xp.reshape(xp.moveaxis(a, axis, 0), (a.shape[axis], -1))


def _from_rows(xp: Any, rows: Any, like_shape: tuple[int, ...], axis: int) -> Any:
    shape = (rows.shape[0],) + tuple(n for i, n in enumerate(like_shape) if i != axis)
    return xp.moveaxis(xp.reshape(rows, shape), 0, axis)


#: Bytes of the float64 ``(band, pixels)`` strip of :func:`_encode_rows`: its dozen
#: buffers then stay in a core's L2 cache. 1 MiB measured 19 ms a 15 x 512 x 512 chunk
#: against 23 ms at 4 MiB (``WIDE_STRIP``) and 22 ms at 512 KiB (one thread, CPU time).
ENCODE_STRIP = 2**20


def _encode_rows(
    xp: Any, x: Any, v: Any, m: dict[str, np.ndarray], *, metrics: bool
) -> tuple[Any, list[float]]:
    """Scores ``(K, N)`` float32 of host (NumPy) pixel rows ``x (B, N)`` and, if
    ``metrics``, the error partials ``[sse, n_values, sam_sum, n_pixels, min, max]`` of
    their reconstruction from those float32 scores.

    Strip by strip, the centred data ``u = x - mean`` is made in float64 in one pass, its
    ``|u|^2`` in a second, and one BLAS product ``R u`` gives the scores ``s = W u``, then
    ``A^T u`` (unless it is ``s``) and ``mu . u``. The error metrics need each pixel's
    ``|e|^2`` (``e = u - A s^``, ``A`` maps the stored float32 scores ``s^`` back to ``u``;
    scale and whitening are folded into ``W`` and ``A``), ``x . e``, ``|x|^2`` and
    ``|x^|^2`` (``x^ = mu + A s^``). Rather than form ``e`` (``B`` rows) they come from
    ``K``-row quantities, exactly in exact arithmetic::

        |e|^2   = |u|^2 - 2 s^ . (A^T u) + s^T (A^T A) s^
        x . e   = |u|^2 - s^ . (A^T u) + mu . u - (A^T mu) . s^
        |x|^2   = |u|^2 + 2 mu . u + |mu|^2
        |x^|^2  = |mu|^2 + 2 (A^T mu) . s^ + s^T (A^T A) s^

    (``A^T A = I`` without scale or whitening). Every buffer is made once per chunk and
    every step writes into one (``out=``): a fresh strip-sized temporary costs page faults
    that exceed its arithmetic. The sums of ``|e|^2`` have an absolute error of a few
    ``eps * |u|^2``, so a strip whose error is below ``GRAM_GUARD`` of its centred energy
    (near-lossless reconstructions) is measured again directly, by forming ``e``
    (:class:`_Errors`): the error sums are correct to about ``1e-9`` relative either way.
    """
    scale, factor, wm = m["scale"], m["factor"], m["w"]
    w = wm / factor[:, None] / scale[None, :]  # (K, B): u -> scores
    at = wm * factor[:, None] * scale[None, :]  # (K, B) = A^T: scores -> u
    mean = np.asarray(m["mean"], dtype=np.float64)
    k, nb = w.shape
    same = bool(np.array_equal(w, at))  # no scale, no whitening: A^T u is W u
    rows = np.concatenate([w] + ([] if same else [at]) + [mean[None, :]])  # (R, B)
    ka = 0 if same else k  # A^T u is g[ka : ka + k]
    gram = None if same else at @ at.T  # (K, K)
    at_mu = at @ mean  # (K,)
    mu2 = float(mean @ mean)
    mean_x = mean[:, None]
    total = x.shape[1]
    out = np.empty((k, total), dtype=np.float32)
    step = max(1, min(strip_pixels(nb, ENCODE_STRIP), total))
    # Flat buffers, reshaped per strip, so that every strip (the last, shorter one too)
    # is C-contiguous: BLAS and the ufuncs take it as it is, and ``np.matmul(..., out=)``
    # copies nothing (it would hold the GIL while copying a strided operand, the reason
    # other kernels call ``backend.matmul``; see docs/DESIGN.md).
    ubuf = np.empty(nb * step)
    gbuf = np.empty(rows.shape[0] * step)
    kbuf = np.empty((2 if gram is not None else 1) * k * step)
    vec = np.empty((8, step))  # uu, p, q, r, ee, xe, xx, yy
    errors = _Errors(np, at.T.copy(), step)
    for a in range(0, total, step):
        n = min(step, total - a)
        xs = x[:, a : a + n]
        u = np.subtract(xs, mean_x, out=ubuf[: nb * n].reshape(nb, n))  # f32 - f64 -> f64
        uu = np.einsum("bn,bn->n", u, u, out=vec[0, :n])  # NaN in any band: NaN |u|^2
        usum = float(uu.sum())
        ok: Any = None  # None: every pixel valid
        if not np.isfinite(usum) or (v is not None and not v[:, a : a + n].all()):
            ok = ~np.isnan(uu)
            if v is not None:
                ok &= np.all(v[:, a : a + n].astype(bool), axis=0)
            u[:, ~ok] = 0.0
            uu[~ok] = 0.0
            usum = float(uu.sum())
        g = np.matmul(rows, u, out=gbuf[: rows.shape[0] * n].reshape(-1, n))
        os_ = out[:, a : a + n]
        os_[...] = g[:k]  # the stored float32 scores
        if not metrics:
            if ok is not None:
                os_[:, ~ok] = np.nan
            continue
        npix = n if ok is None else int(np.count_nonzero(ok))
        if npix == 0:
            os_[...] = np.nan
            continue
        sh = kbuf[: k * n].reshape(k, n)
        sh[...] = os_  # the stored scores, float64 (0 at invalid pixels)
        if ok is not None:
            os_[:, ~ok] = np.nan
        au = g[ka : ka + k]
        p = np.einsum("kn,kn->n", sh, au, out=vec[1, :n])  # s^ . A^T u
        if gram is None:
            q = np.einsum("kn,kn->n", sh, sh, out=vec[2, :n])  # s^T s^
        else:
            gs = np.matmul(gram, sh, out=kbuf[k * n : 2 * k * n].reshape(k, n))
            q = np.einsum("kn,kn->n", sh, gs, out=vec[2, :n])  # s^T (A^T A) s^
        r = np.matmul(at_mu, sh, out=vec[3, :n])  # (A^T mu) . s^
        ee = np.multiply(p, -2.0, out=vec[4, :n])
        ee += q
        ee += uu  # |e|^2 (0 at invalid pixels)
        sse = float(ee.sum())
        if sse < GRAM_GUARD * usum:
            # near-lossless: measure this strip directly (forming e), not by the identity
            xd = xs.astype(np.float64)
            okm = np.ones(n, dtype=bool) if ok is None else ok
            errors.add(xd, _colsum(np, xd, xd), u, sh, okm, ok is None)
            continue
        mu_u = g[-1]
        xe = np.subtract(uu, p, out=vec[5, :n])
        xe += mu_u
        xe -= r  # x . e
        xx = np.multiply(mu_u, 2.0, out=vec[6, :n])
        xx += uu
        xx += mu2  # |x|^2
        yy = np.multiply(r, 2.0, out=vec[7, :n])
        yy += q
        yy += mu2  # |x^|^2
        good = np.greater(xx, 0.0)  # no angle where the spectrum or its
        good &= yy > 0.0  # reconstruction is all zero
        if ok is not None:
            good &= ok
        ngood = n if good.all() else int(np.count_nonzero(good))
        # The angle from its sine and cosine, |x||x^| sin = |x x e| (x^ = x - e), by
        # Lagrange's identity, and x . x^ = |x|^2 - x . e: accurate for small angles,
        # where arccos of a cosine near 1 is not.
        sin = np.multiply(xx, ee, out=vec[1, :n])  # p, q, r are used: reuse their rows
        sin -= np.multiply(xe, xe, out=vec[2, :n])
        np.maximum(sin, 0.0, out=sin)
        np.sqrt(sin, out=sin)
        cos = np.subtract(xx, xe, out=vec[3, :n])
        ang = np.arctan2(sin, cos, out=sin)
        sam = float(ang.sum()) if ngood == n else float(ang.sum(where=good))
        lo, hi = _valid_range(np, xs, ok, ok is None)
        errors.record(sse, npix * nb, sam, float(ngood), lo, hi)
    return out, (errors.partial() if metrics else [])


#: A strip's error sums come from the Gram identities of :func:`_encode_rows` when its
#: squared error is at least this fraction of its centred energy ``sum |u|^2`` (so their
#: rounding, a few ``eps * sum |u|^2``, is below ~1e-9 of the result); below it the
#: strip is measured directly.
GRAM_GUARD = 1e-6


def _centred_strips(
    xp: Any, x: Any, mean: Any, *, valid: Any = None, scores: Any = None
) -> Iterator[tuple[int, Any, Any, Any, Any, bool]]:
    """Walk the pixel rows ``x (B, N)`` in strips, yielding ``(start, xd, xx,
    u, ok, every)``: the strip in float64, its per-pixel ``|x|^2``, the centred
    ``u = x - mean`` (0 at invalid pixels), which pixels are valid (no NaN in any band,
    ``valid`` all True, no NaN in ``scores``) and whether all are. The buffers are made
    once per chunk (a fresh large temporary per strip costs page faults that can exceed
    the arithmetic) and reused: use each strip before asking for the next.
    """
    step = strip_pixels(x.shape[0], WIDE_STRIP)
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
        u = array_module(buf).subtract(xd, mean, out=buf[1, :, :n])
        if not every:
            u = xp.where(ok[None, :], u, 0.0)
        yield a, xd, xx, u, ok, every


def _colsum(xp: Any, a: Any, b: Any) -> Any:
    """Per-column ``sum(a * b)`` over rows (NumPy: one einsum pass, no temporary)."""
    if isinstance(a, np.ndarray):
        return np.einsum("bn,bn->n", a, b)
    return xp.sum(a * b, axis=0)


class _Errors:
    """Reconstruction-error partials of one chunk of ``B`` bands, gathered strip by strip.

    Per strip it forms ``e = u - W^T s``, the error in the centred space (so it does not
    cancel against an offset; ``wt`` maps the stored scores back to ``u``), and reduces
    each pixel's ``|x|^2``, ``x . e`` and ``|e|^2`` at once by :func:`error_sums`, so
    nothing chunk-sized is kept. :meth:`partial` gives
    ``[sse, n_values, sam_sum, n_angles, min, max]``.
    """

    def __init__(self, xp: Any, wt: Any, width: int) -> None:
        self.xp, self.wt, self.width = xp, wt, max(1, width)
        self.work: Any = None  # e, one strip; made on the first strip that needs it
        self.acc = [0.0, 0.0, 0.0, 0.0, float("inf"), float("-inf")]

    def record(self, sse: float, nvals: int, sam: float, nsam: float, lo: Any, hi: Any) -> None:
        """Add one strip's sums (however they were computed) to the chunk's partials."""
        acc = self.acc
        acc[0] += sse
        acc[1] += float(nvals)
        acc[2] += sam
        acc[3] += nsam
        acc[4] = min(acc[4], float(lo))
        acc[5] = max(acc[5], float(hi))

    def add(self, xd: Any, xx: Any, u: Any, s: Any, ok: Any, every: bool) -> None:
        """One strip: ``xd`` the float64 data, ``xx`` its ``|x|^2``, ``u`` the centred
        data (0 where not ``ok``), ``s`` the stored float32 scores."""
        xp = self.xp
        npix = xd.shape[1] if every else int(xp.sum(xp.astype(ok, xp.int64)))
        if npix == 0:
            return
        lo, hi = _valid_range(xp, xd, ok, every)
        if not every:
            s = xp.where(ok[None, :], s, 0.0)
            xd = xp.where(ok[None, :], xd, 0.0)
            xx = xp.where(ok, xx, 0.0)
        if self.work is None:
            self.work = xp.empty((self.wt.shape[0], self.width), dtype=xp.float64)
        e = self.work[:, : xd.shape[1]]
        array_module(e).matmul(self.wt, xp.astype(s, xp.float64), out=e)
        e *= -1.0
        e += u
        sse, sam, nsam = error_sums(xp, xx, _colsum(xp, xd, e), _colsum(xp, e, e), ok)
        self.record(sse, npix * xd.shape[0], sam, nsam, lo, hi)

    def partial(self) -> list[float]:
        return list(self.acc)


def _valid_range(xp: Any, x: Any, ok: Any, every: bool) -> tuple[Any, Any]:
    """Smallest and largest value of the ``ok`` pixels (columns) of ``x (B, N)``."""
    if every:
        return xp.min(x), xp.max(x)
    return xp.min(xp.where(ok[None, :], x, xp.inf)), xp.max(xp.where(ok[None, :], x, -xp.inf))


def error_sums(xp: Any, xx: Any, xe: Any, ee: Any, ok: Any) -> tuple[float, float, float]:
    """``(sum |e|^2, sum of spectral angles, number of angles)`` over the ``ok`` pixels,
    from each pixel's ``|x|^2``, ``x . e`` and ``|e|^2`` (``e = x - x_hat``), using
    ``x . x_hat = |x|^2 - x . e`` and ``|x_hat|^2 = |x|^2 - 2 x . e + |e|^2``. A pixel
    whose spectrum or reconstruction is all zero has no angle. One definition for every
    compression method, so their errors compare."""
    sse, sam, nsam = error_sum_arrays(xp, xx, xe, ee, ok)
    return float(sse), float(sam), float(nsam)


def error_sum_arrays(xp: Any, xx: Any, xe: Any, ee: Any, ok: Any) -> tuple[Any, Any, Any]:
    """:func:`error_sums` as 0-d float64 arrays where the inputs live (no host sync)."""
    yy = xx - 2 * xe + ee  # |x_hat|^2
    good = ok & (xx > 0) & (yy > 0)
    # atan2 of the sine (|x||x_hat| sin = |x x e|, Lagrange's identity) and the cosine
    # (x . x_hat = |x|^2 - x . e): accurate for small angles, where arccos is not.
    sin = xp.sqrt(xp.maximum(xx * ee - xe * xe, 0.0))
    angle = xp.atan2(sin, xx - xe)
    return (
        xp.sum(xp.where(ok, ee, 0.0)),
        xp.sum(xp.where(good, angle, 0.0)),
        xp.sum(xp.astype(good, xp.float64)),
    )


# -- the device (CuPy) kernels: whole chunk, masks instead of branches, no host sync -----


def _device_maps(x: Any, m: dict[str, np.ndarray]) -> tuple[Any, Any, Any]:
    """``W`` (K, B: centred data -> scores), ``A`` (B, K: stored scores -> centred data)
    and the mean (B, 1), on the device (uploaded once per process)."""
    scale, factor, wm = m["scale"], m["factor"], m["w"]
    w = wm / factor[:, None] / scale[None, :]
    a = (wm * factor[:, None] * scale[None, :]).T
    return (
        device_constant(x, w),
        device_constant(x, a),
        device_constant(x, np.asarray(m["mean"])[:, None]),
    )


def _device_partial(xp: Any, xd: Any, u: Any, s: Any, a: Any, ok: Any) -> Any:
    """``[sse, n_values, sam_sum, n_angles, min, max]`` (a device array) of the ``ok``
    pixels of ``xd (B, N)`` (float64) reconstructed from the stored scores ``s``; ``u`` is
    the centred data, 0 where not ``ok``. The error ``e = u - A s`` is formed directly
    (one more small matmul on the GPU) rather than by the Gram identities of the CPU."""
    f64 = xp.float64
    s = xp.where(ok[None, :], xp.astype(s, f64), 0.0)
    e = u - matmul(a, s)
    xz = xp.where(ok[None, :], xd, 0.0)
    sse, sam, nsam = error_sum_arrays(
        xp, xp.sum(xz * xz, axis=0), xp.sum(xz * e, axis=0), xp.sum(e * e, axis=0), ok
    )
    npix = xp.sum(xp.astype(ok, f64))
    lo = xp.min(xp.where(ok[None, :], xd, xp.inf))
    hi = xp.max(xp.where(ok[None, :], xd, -xp.inf))
    return xp.stack([sse, npix * xd.shape[0], sam, nsam, lo, hi])


def _device_encode(
    xp: Any, x: Any, v: Any, m: dict[str, np.ndarray], *, metrics: bool
) -> tuple[Any, Any]:
    """:func:`_encode_rows` on the GPU: the whole chunk, scores and (``metrics``) the
    error partial as a device array, no host sync."""
    w, a, mean = _device_maps(x, m)
    xd = xp.astype(x, xp.float64)
    u = xd - mean
    ok = ~xp.isnan(xp.sum(u * u, axis=0))  # NaN in any band
    if v is not None:
        ok = ok & xp.all(xp.astype(v, xp.bool), axis=0)
    u = xp.where(ok[None, :], u, 0.0)
    s = xp.astype(matmul(w, u), xp.float32)
    out = xp.where(ok[None, :], s, xp.nan)
    return out, (_device_partial(xp, xd, u, s, a, ok) if metrics else None)


@device_task
def project_block(block: Any, *valid: Any, m: dict[str, np.ndarray], axis: int) -> Any:
    xp = array_namespace(block)
    v = _as_rows(xp, valid[0], axis) if valid else None
    if is_device_array(block):
        out, _ = _device_encode(xp, _as_rows(xp, block, axis), v, m, metrics=False)
        return _from_rows(xp, out, block.shape, axis)
    out, _ = _encode_rows(xp, _as_rows(xp, block, axis), v, m, metrics=False)
    return _from_rows(xp, out, block.shape, axis)


@device_task
def encode_block(
    block: Any, *valid: Any, m: dict[str, np.ndarray], axis: int, ndim: int
) -> tuple[Any, Any]:
    """Scores and error partials of one chunk, from one look at it (see
    :func:`pca_encode`): a pair, split by :func:`pair_first` and :func:`pair_second`."""
    xp = array_namespace(block)
    v = _as_rows(xp, valid[0], axis) if valid else None
    if is_device_array(block):
        out, part = _device_encode(xp, _as_rows(xp, block, axis), v, m, metrics=True)
        return _from_rows(xp, out, block.shape, axis), xp.reshape(part, (1,) * ndim + (6,))
    out, acc = _encode_rows(xp, _as_rows(xp, block, axis), v, m, metrics=True)
    partial = xp.reshape(xp.asarray(acc, dtype=xp.float64), (1,) * ndim + (6,))
    return _from_rows(xp, out, block.shape, axis), partial


def pair_first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def pair_second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


@device_task
def reconstruct_block(scores: Any, *, m: dict[str, np.ndarray], axis: int) -> Any:
    xp = array_namespace(scores)
    s = _as_rows(xp, scores, axis)
    if is_device_array(scores):  # the whole chunk: one matmul, constants uploaded once
        wt = device_constant(scores, (m["w"] * m["factor"][:, None]).T)
        scale = device_constant(scores, np.asarray(m["scale"])[:, None])
        mean = device_constant(scores, np.asarray(m["mean"])[:, None])
        xhat = xp.astype(matmul(wt, xp.astype(s, xp.float64)) * scale + mean, xp.float32)
        return _from_rows(xp, xhat, scores.shape, axis)
    wt = xp.asarray((m["w"] * m["factor"][:, None]).T)  # (B, K)
    mean, scale = xp.asarray(m["mean"])[:, None], xp.asarray(m["scale"])[:, None]
    out = xp.empty((wt.shape[0], s.shape[1]), dtype=xp.float32)
    step = strip_pixels(wt.shape[0], WIDE_STRIP)
    for a in range(0, s.shape[1], step):
        xhat = matmul(wt, xp.astype(s[:, a : a + step], xp.float64))
        xhat *= scale
        xhat += mean
        out[:, a : a + step] = xp.astype(xhat, xp.float32)
    return _from_rows(xp, out, scores.shape, axis)


@device_task
def metric_block(x: Any, s: Any, *, m: dict[str, np.ndarray], axis: int, ndim: int) -> Any:
    """Error partials of one chunk reconstructed from the scores ``s``, strip by strip,
    without rebuilding the whole chunk (see :class:`_Errors`)."""
    xp = array_namespace(x)
    rows = _as_rows(xp, x, axis)
    srows = _as_rows(xp, s, axis)
    if is_device_array(x):
        _, a, mean = _device_maps(x, m)
        xd = xp.astype(rows, xp.float64)
        ok = ~xp.isnan(xp.sum(xd * xd, axis=0)) & ~xp.any(xp.isnan(srows), axis=0)
        u = xp.where(ok[None, :], xd - mean, 0.0)
        part = _device_partial(xp, xd, u, srows, a, ok)
        return xp.reshape(part, (1,) * ndim + (6,))
    wt = xp.asarray((m["w"] * m["factor"][:, None] * m["scale"][None, :]).T)  # (B, K)
    mean = xp.asarray(m["mean"])[:, None]
    errors = _Errors(xp, wt, min(strip_pixels(rows.shape[0], WIDE_STRIP), rows.shape[1]))
    for a, xd, xx, u, ok, every in _centred_strips(xp, rows, mean, scores=srows):
        errors.add(xd, xx, u, srows[:, a : a + xd.shape[1]], ok, every)
    return xp.reshape(xp.asarray(errors.partial(), dtype=xp.float64), (1,) * ndim + (6,))
