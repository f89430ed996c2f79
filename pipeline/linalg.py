"""Linear algebra that says how far to trust its answer. There is no explicit inverse here.

Every function works on NumPy or CuPy arrays (``xp = array_namespace(a)``), computes the
condition number of the problem it solves, returns it with the result, and warns with a
:class:`~cubepipe.storage.errors.CubepipeWarning` when the condition number is beyond what
the dtype resolves (``cond * eps >= 1``: about 4.5e15 for float64, 8.4e6 for float32),
naming what it did about it:

- :func:`solve`: LU solve (never the explicit inverse times b: slower, less accurate), plus up
  to three steps of iterative refinement when ill-conditioned, keeping the smallest
  residual; ``regularize="tikhonov"`` or ``"tsvd"`` trades residual for a bounded norm.
- :func:`lstsq`: SVD least squares with singular values below ``rcond * s_max`` cut.
- :func:`eigh`: symmetric eigendecomposition, descending, with the spread of eigenvalues.
- :func:`cholesky`: falls back to a jittered (Tikhonov) factor when not positive definite.

References
----------
N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM 2002,
chapters 9 (LU) and 12 (iterative refinement).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

from cubepipe.storage.errors import CubepipeWarning, InputError

from .backend import array_namespace

__all__ = ["Cholesky", "Eigh", "Lstsq", "Solved", "cholesky", "cond", "eigh", "lstsq", "solve"]


class Solved(NamedTuple):
    x: Any
    cond: float
    method: str
    residual: float


class Lstsq(NamedTuple):
    x: Any
    cond: float
    rank: int
    residual: float


class Eigh(NamedTuple):
    values: Any  # descending
    vectors: Any  # columns, matching values
    cond: float


class Cholesky(NamedTuple):
    factor: Any  # lower triangular L with A (+ jitter * I) = L L^T
    cond: float
    jitter: float


def _eps(xp: Any, dtype: Any) -> float:
    return float(xp.finfo(dtype).eps)


def _float(a: Any) -> float:
    return float(a.item() if hasattr(a, "item") else a)


def _square(a: Any, name: str) -> None:
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise InputError(f"{name} needs a square matrix; got shape {tuple(a.shape)}")


def cond(a: Any) -> float:
    """2-norm condition number ``s_max / s_min`` (inf for a singular matrix)."""
    xp = array_namespace(a)
    s = xp.linalg.svdvals(a)
    smin = _float(xp.min(s))
    return float("inf") if smin == 0 else _float(xp.max(s)) / smin


def _warn(what: str, c: float, dtype: Any, did: str) -> None:
    warnings.warn(
        f"{what}: condition number {c:.3g} is beyond what {dtype} resolves "
        f"(1/eps = {1 / _eps_np(dtype):.3g}); digits of the result may be noise. {did}",
        CubepipeWarning,
        stacklevel=3,
    )


def _eps_np(dtype: Any) -> float:
    import numpy as np  # noqa: PLC0415  (eps of a dtype name; host-side only)

    return float(np.finfo(np.dtype(str(dtype).replace("cupy.", ""))).eps)


@contextlib.contextmanager
def _raising(xp: Any) -> Iterator[None]:
    """LAPACK-style errors on CuPy too: cuSOLVER reports a singular or non-positive-definite
    matrix only through its info code, which CuPy ignores by default (NaN results)."""
    if "cupy" not in getattr(xp, "__name__", ""):
        yield
        return
    import cupyx  # noqa: PLC0415  (only reached with CuPy arrays)

    with cupyx.errstate(linalg="raise"):
        yield


def _finite(xp: Any, a: Any) -> bool:
    return bool(xp.all(xp.isfinite(a)))


def _lu_solve(xp: Any, a: Any, b: Any) -> Any:
    """``xp.linalg.solve``, raising on a singular matrix on every backend: the solver's
    own error, or a non-finite answer (what cuSOLVER gives when the error is not raised)."""
    with _raising(xp):
        x = xp.linalg.solve(a, b)
    if not _finite(xp, x):
        raise ArithmeticError("LU solve gave non-finite values: the matrix is singular")
    return x


def _residual(xp: Any, a: Any, x: Any, b: Any) -> float:
    return _float(xp.linalg.vector_norm(a @ x - b))


def _svd_solve(xp: Any, a: Any, b: Any, how: str) -> Any:
    u, s, vt = xp.linalg.svd(a, full_matrices=False)
    smax = xp.max(s)
    ub = xp.permute_dims(u, (1, 0)) @ b
    eps = _eps(xp, a.dtype)
    if how == "tsvd":
        keep = s > eps * max(a.shape) * smax
        factor = xp.where(keep, 1.0 / xp.where(keep, s, 1.0), 0.0)
    else:  # tikhonov, lambda = eps * s_max: damps exactly the directions lost to rounding
        lam = eps * smax
        factor = s / (s * s + lam * lam)
    scaled = factor[:, None] * ub if ub.ndim == 2 else factor * ub
    return xp.permute_dims(vt, (1, 0)) @ scaled


def solve(a: Any, b: Any, *, regularize: str | None = None, warn: bool = True) -> Solved:
    """Solve ``a @ x = b`` for square ``a``.

    Parameters
    ----------
    a
        ``(n, n)`` matrix (NumPy or CuPy).
    b
        ``(n,)`` or ``(n, k)`` right-hand side.
    regularize
        None (default): LU with partial pivoting; when ill-conditioned, iterative
        refinement (up to 3 steps, best residual kept). ``"tikhonov"``: the minimiser of
        ``|a x - b|^2 + lam^2 |x|^2`` with ``lam = eps * s_max``. ``"tsvd"``: drop singular
        values below ``eps * n * s_max``. Both cost an SVD and bound ``|x|``.

    Returns
    -------
    Solved
        ``x``, ``cond`` (2-norm), ``method`` (what was done), ``residual`` ``|a x - b|``.
    """
    xp = array_namespace(a, b)
    _square(a, "solve")
    if regularize not in (None, "tikhonov", "tsvd"):
        raise InputError(f"regularize must be None, 'tikhonov' or 'tsvd'; got {regularize!r}")
    c = cond(a)
    ill = not c * _eps(xp, a.dtype) < 1
    if regularize:
        x = _svd_solve(xp, a, b, regularize)
        method = f"{regularize} (SVD)"
    else:
        try:
            x = _lu_solve(xp, a, b)
            method = "LU"
        except Exception:  # exactly singular: LU breaks down (or gives inf/NaN)
            x = _svd_solve(xp, a, b, "tsvd")
            method = "tsvd (singular matrix)"
        if ill and method == "LU":
            best, best_r = x, _residual(xp, a, x, b)
            for _ in range(3):
                try:
                    x = x + _lu_solve(xp, a, b - a @ x)
                except Exception:
                    break
                r = _residual(xp, a, x, b)
                if r < best_r:
                    best, best_r = x, r
            x = best
            method = "LU + iterative refinement"
    res = _residual(xp, a, x, b)
    if ill and warn:
        _warn(
            "solve",
            c,
            a.dtype,
            f"Used {method} (residual {res:.3g}); pass regularize='tikhonov' or 'tsvd' for a "
            "bounded-norm answer.",
        )
    return Solved(x, c, method, res)


def lstsq(a: Any, b: Any, *, rcond: float | None = None, warn: bool = True) -> Lstsq:
    """Least squares ``min |a x - b|`` by SVD, cutting singular values below
    ``rcond * s_max`` (default ``eps * max(m, n)``); returns rank and condition number."""
    xp = array_namespace(a, b)
    u, s, vt = xp.linalg.svd(a, full_matrices=False)
    smax = _float(xp.max(s))
    rcond = _eps(xp, a.dtype) * max(a.shape) if rcond is None else rcond
    keep = s > rcond * smax
    rank = int(_float(xp.sum(xp.astype(keep, xp.int64))))
    smin = _float(xp.min(s))
    c = float("inf") if smin == 0 else smax / smin
    factor = xp.where(keep, 1.0 / xp.where(keep, s, 1.0), 0.0)
    ub = xp.permute_dims(u, (1, 0)) @ b
    x = xp.permute_dims(vt, (1, 0)) @ (factor[:, None] * ub if ub.ndim == 2 else factor * ub)
    if warn and rank < min(a.shape):
        _warn(
            "lstsq",
            c,
            a.dtype,
            f"Truncated to rank {rank} of {min(a.shape)} (singular values below "
            f"{rcond:.3g} * s_max dropped).",
        )
    return Lstsq(x, c, rank, _residual(xp, a, x, b))


def eigh(a: Any) -> Eigh:
    """Eigenvalues (descending) and eigenvectors of a symmetric matrix, with its
    condition number ``|l|_max / |l|_min`` (inf if singular). Eigenvalues of a symmetric
    matrix are well conditioned whatever this number is, so no warning is given here;
    callers that divide by eigenvalues (whitening) check it."""
    xp = array_namespace(a)
    _square(a, "eigh")
    sym = (a + xp.permute_dims(a, (1, 0))) / 2
    w, v = xp.linalg.eigh(sym)
    order = xp.flip(xp.argsort(w))
    w = xp.take(w, order)
    v = xp.take(v, order, axis=1)
    aw = xp.abs(w)
    lo = _float(xp.min(aw))
    return Eigh(w, v, float("inf") if lo == 0 else _float(xp.max(aw)) / lo)


def cholesky(a: Any, *, warn: bool = True) -> Cholesky:
    """Lower Cholesky factor of a symmetric positive definite matrix. When ``a`` is not
    numerically positive definite, ``eps * n * trace(a) / n`` (growing tenfold until it
    works) is added to the diagonal (Tikhonov), with a warning stating the jitter."""
    xp = array_namespace(a)
    _square(a, "cholesky")
    e = eigh(a)
    c = e.cond
    n = a.shape[0]
    jitter = 0.0
    base = _eps(xp, a.dtype) * max(_float(xp.sum(xp.abs(xp.linalg.diagonal(a)))), 1e-300)
    eye = xp.eye(n, dtype=a.dtype)
    for _ in range(20):
        shifted = a + jitter * eye
        try:
            with _raising(xp):
                factor = xp.linalg.cholesky(shifted)
        except Exception:
            jitter = base if jitter == 0 else jitter * 10
            continue
        if not _is_factor(xp, factor, shifted):
            jitter = base if jitter == 0 else jitter * 10
            continue
        if warn and (jitter > 0 or not c * _eps(xp, a.dtype) < 1):
            _warn("cholesky", c, a.dtype, f"Added {jitter:.3g} to the diagonal (Tikhonov).")
        return Cholesky(factor, c, jitter)
    raise InputError("cholesky: the matrix is not positive definite even with a large jitter")


def _is_factor(xp: Any, factor: Any, a: Any) -> bool:
    """Whether ``factor`` is a finished Cholesky factor of ``a``: finite and
    ``|L L^T - a| <= 64 n eps |a|`` (the backward error of a completed factorization;
    cuSOLVER, not raising, hands back a factor that stopped at the first non-positive
    pivot, which fails this)."""
    if not _finite(xp, factor):
        return False
    n = a.shape[0]
    err = _float(xp.linalg.matrix_norm(factor @ xp.permute_dims(factor, (1, 0)) - a))
    return err <= 64 * n * _eps(xp, a.dtype) * max(_float(xp.linalg.matrix_norm(a)), 1e-300)
