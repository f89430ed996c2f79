"""Residuals in twice the working precision, and iterative refinement with them.

``b - a x`` computed in float64 for float32, and in double-double for float64: error-free
transformations (Knuth's TwoSum, Dekker's TwoProduct, which needs no FMA) in the Dot2
scheme of Ogita, Rump & Oishi, summed pairwise over blocks of columns so that NumPy and
CuPy run it as whole-array operations. With such residuals, refinement
``x <- x + solve(a, b - a x)`` reaches the correctly rounded solution whenever the
solver's error contracts (Higham, ch. 12), far past where a working-precision residual
stalls. Plain ``np.longdouble`` residuals (80-bit on x86, float64 elsewhere) were tried:
on the cond ~1e16 test systems they stall near 1e-4 relative error, where double-double
residuals reach ~1e-16 (see :func:`~cubepipe.pipeline.linalg.solve`).

References
----------
T. Ogita, S. M. Rump, S. Oishi, "Accurate sum and dot product", SIAM J. Sci. Comput.
26(6), 2005. N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM
2002, chapter 12.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["accurate_residual", "refine", "residual_precision"]


def _float(a: Any) -> float:
    return float(a.item() if hasattr(a, "item") else a)


def _finite(xp: Any, a: Any) -> bool:
    return bool(xp.all(xp.isfinite(a)))


def _max_abs(xp: Any, v: Any) -> float:
    return _float(xp.max(xp.abs(v))) if v.size else 0.0


_SPLITTER = 2.0**27 + 1.0  # Dekker's splitter for a 53-bit significand
_BLOCK = 2**20  # products formed at once (8 MiB of float64)


def _two_sum(a: Any, b: Any) -> tuple[Any, Any]:
    """``a + b = s + e`` exactly."""
    s = a + b
    z = s - a
    return s, (a - (s - z)) + (b - z)


def _two_prod(a: Any, b: Any) -> tuple[Any, Any]:
    """``a * b = p + e`` exactly (barring overflow above ~1e300 and underflow)."""
    p = a * b
    c = _SPLITTER * a
    ah = c - (c - a)
    al = a - ah
    c = _SPLITTER * b
    bh = c - (c - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _dot2_residual(xp: Any, a: Any, x: Any, b: Any) -> Any:
    """``b - a @ x`` for float64, as accurate as if computed with a 106-bit significand
    and then rounded: error ``<= eps |r| + O(n eps^2) (|a| |x| + |b|)``."""
    vec = x.ndim == 1
    x2 = x[:, None] if vec else x
    s = b[:, None] if vec else b
    c = xp.zeros_like(s)
    m, n = a.shape
    w = max(1, min(n, _BLOCK // max(1, m * x2.shape[1])))
    for j in range(0, n, w):
        p, e = _two_prod(a[:, j : j + w, None], -x2[None, j : j + w, :])
        c = c + xp.sum(e, axis=1)
        while p.shape[1] > 1:  # pairwise, every partial sum's rounding error kept in c
            if p.shape[1] % 2:
                p = xp.concat([p, xp.zeros_like(p[:, :1, :])], axis=1)
            p, e = _two_sum(p[:, 0::2, :], p[:, 1::2, :])
            c = c + xp.sum(e, axis=1)
        s, e = _two_sum(s, p[:, 0, :])
        c = c + e
    r = s + c
    return r[:, 0] if vec else r


def accurate_residual(xp: Any, a: Any, x: Any, b: Any) -> Any:
    """``b - a @ x`` in about twice the working precision, rounded to it: float32 through
    float64, float64 in double-double; other dtypes (complex) in the working precision."""
    if a.dtype == xp.float32:
        f64 = xp.float64
        r = xp.astype(b, f64) - xp.astype(a, f64) @ xp.astype(x, f64)
        return xp.astype(r, xp.float32)
    if a.dtype == xp.float64:
        return _dot2_residual(xp, a, x, b)
    return b - a @ x


def residual_precision(dtype: Any) -> str:
    """The precision :func:`accurate_residual` computes in, as a word."""
    name = str(dtype).replace("cupy.", "")
    return {"float32": "float64", "float64": "double-double"}.get(name, name)


#: At most this many refinement steps (each one O(n^2) with the factorization kept).
_MAX_STEPS = 30
#: Stop once a correction is more than this fraction of the one before (slow contraction).
_SLOW = 0.5


def refine(
    xp: Any, a: Any, b: Any, x: Any, step: Callable[[Any], Any], eps: float
) -> tuple[Any, int, float]:
    """Iterative refinement ``x_(k+1) = x_k + step(b - a x_k)`` with accurate residuals.

    The correction ``d_k`` computed at ``x_k`` estimates the error of ``x_k``. Stops when
    ``|d_k| <= eps |x_k|`` (converged; that step is taken), when ``|d_k| >= |d_(k-1)|``
    (no longer contracting: ``x_(k-1)`` is kept) or when ``|d_k| > |d_(k-1)| / 2``
    (contracting too slowly for the corrections to be trusted: ``x_k`` is kept). Returns the iterate, its number of steps
    and the last correction relative to it, ``|d| / |x|`` in the inf-norm (NaN if none).
    """
    prev_x, prev_d = x, math.inf
    for k in range(_MAX_STEPS):
        try:
            d = step(accurate_residual(xp, a, x, b))
        except (ArithmeticError, ValueError):
            d = None
        if d is None or not _finite(xp, d):
            return x, k, _relative(prev_d, _max_abs(xp, x))
        dn = _max_abs(xp, d)
        if dn >= prev_d:
            return prev_x, k - 1, _relative(prev_d, _max_abs(xp, prev_x))
        if dn > _SLOW * prev_d:  # LAPACK's xGERFSX stops here too: corrections unreliable
            return x, k, _relative(dn, _max_abs(xp, x))
        prev_x, prev_d = x, dn
        x = x + d
        xn = _max_abs(xp, x)
        if dn <= eps * xn:
            return x, k + 1, _relative(dn, xn)
    return x, _MAX_STEPS, _relative(prev_d, _max_abs(xp, x))


def _relative(d: float, x: float) -> float:
    if d == math.inf:
        return float("nan")
    return d / x if x else (0.0 if d == 0 else math.inf)
