"""Linear algebra that says how far to trust its answer. There is no explicit inverse here.

Every function works on NumPy or CuPy arrays (``xp = array_namespace(a)``), computes the
condition number of the problem it solves, returns it with the result, and warns with a
:class:`~cubepipe.storage.errors.CubepipeWarning` when the condition number is beyond what
the dtype resolves (``cond * eps >= 1``: about 4.5e15 for float64, 8.4e6 for float32),
saying what it did and how far to trust the result:

- :func:`solve`: the solver that fits the matrix -- triangular substitution for a triangular
  one (a Cholesky factor), Cholesky for a symmetric positive definite one, else LU; never
  the explicit inverse times b (slower, less accurate) -- then, when conditioning costs
  digits, iterative refinement with residuals in twice the working precision. It reports
  the relative residual and the error bound ``cond * eps``. ``regularize=`` answers a
  different problem; it is never the advice for an inaccurate answer.
- :func:`lstsq`: SVD least squares with singular values below ``rcond * s_max`` cut.
- :func:`eigh`: symmetric eigendecomposition, descending, with the spread of eigenvalues.
- :func:`cholesky`: falls back to a jittered (Tikhonov) factor when not positive definite.

References
----------
N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM 2002,
chapters 8 (triangular systems), 9 (LU), 10 (Cholesky) and 12 (iterative refinement).
T. Ogita, S. M. Rump, S. Oishi, "Accurate sum and dot product", SIAM J. Sci. Comput. 26(6),
2005 (the double-double residual).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from cubepipe.storage.errors import CubepipeWarning, InputError, NonFiniteError

from .backend import array_namespace, linalg_module
from .refinement import accurate_residual, residual_precision
from .refinement import refine as _refine

__all__ = [
    "ASSUME",
    "Cholesky",
    "Eigh",
    "Lstsq",
    "Solved",
    "cholesky",
    "cond",
    "eigh",
    "lstsq",
    "solve",
]


class Solved(NamedTuple):
    """What :func:`solve` returns; see there."""

    x: Any
    cond: float
    method: str
    residual: float  # |a x - b|_2 in the working precision
    backward_error: float = float("nan")  # |b - a x| / (|a| |x|), accurate residual
    error_bound: float = float("nan")  # cond * eps
    refinement_steps: int = 0
    error_estimate: float = float("nan")  # last refinement correction / |x| (inf-norms)


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


# -- which solver ---------------------------------------------------------------------------

#: ``solve(assume=...)``: ``auto`` looks at the matrix.
ASSUME = ("auto", "general", "spd", "triangular")


def _is_zero(xp: Any, a: Any) -> bool:
    return bool(xp.all(a == 0))


def _structure(xp: Any, a: Any, assume: str, triangular: str | None) -> str:
    """``"lower"``, ``"upper"``, ``"spd"`` or ``"general"``: which solver fits ``a``.

    Triangular means exactly zero on the other side of the diagonal; a candidate for
    Cholesky is real, exactly symmetric, with a positive diagonal (whether it is positive
    definite only the factorization tells)."""
    if assume not in ASSUME:
        raise InputError(f"assume must be one of {', '.join(ASSUME)}; got {assume!r}")
    if triangular is not None:
        if triangular not in ("lower", "upper"):
            raise InputError(f"triangular must be 'lower' or 'upper'; got {triangular!r}")
        if assume not in ("auto", "triangular"):
            raise InputError(f"triangular={triangular!r} contradicts assume={assume!r}")
        return triangular
    if assume == "general":
        return "general"
    if assume in ("auto", "triangular"):
        if _is_zero(xp, xp.triu(a, k=1)):
            return "lower"
        if _is_zero(xp, xp.tril(a, k=-1)):
            return "upper"
        if assume == "triangular":
            raise InputError(
                "solve: assume='triangular' but the matrix has nonzeros both above and below "
                "the diagonal; pass triangular='lower' or 'upper' to use only that triangle"
            )
    real = xp.isdtype(a.dtype, "real floating")
    symmetric = real and _is_zero(xp, a - xp.permute_dims(a, (1, 0)))
    if assume == "spd" and not symmetric:
        raise InputError(
            "solve: assume='spd' needs a real, exactly symmetric matrix; symmetrize it "
            "((a + a.T) / 2) or use assume='general'"
        )
    if symmetric and bool(xp.all(xp.linalg.diagonal(a) > 0)):
        return "spd"
    return "general"


def _triangular_solver(xp: Any, a: Any, lower: bool) -> Callable[[Any], Any]:
    if not bool(xp.all(xp.linalg.diagonal(a) != 0)):
        raise ArithmeticError("a zero on the diagonal of a triangular matrix")
    sl = linalg_module(xp)

    def run(r: Any) -> Any:
        return sl.solve_triangular(a, r, lower=lower, check_finite=False)

    return run


def _cholesky_solver(xp: Any, a: Any) -> Callable[[Any], Any] | None:
    """Two triangular solves with the Cholesky factor (what LAPACK's ``potrs`` and SciPy's
    ``cho_solve`` do), or None when the factorization breaks down."""
    try:
        with _raising(xp):
            factor = xp.linalg.cholesky(a)
    except (ArithmeticError, ValueError):
        return None
    if not _is_factor(xp, factor, a):
        return None
    sl = linalg_module(xp)

    def run(r: Any) -> Any:
        y = sl.solve_triangular(factor, r, lower=True, check_finite=False)
        return sl.solve_triangular(factor, y, lower=True, trans=1, check_finite=False)

    return run


def _lu_solver(xp: Any, a: Any) -> Callable[[Any], Any]:
    """LU factorization kept for the refinement steps (one factorization for all)."""
    sl = linalg_module(xp)
    with warnings.catch_warnings():  # an exactly singular U shows as inf/NaN corrections
        warnings.simplefilter("ignore")
        lu = sl.lu_factor(a, check_finite=False)

    def run(r: Any) -> Any:
        return sl.lu_solve(lu, r, check_finite=False)

    return run


def _direct(
    xp: Any, a: Any, b: Any, structure: str
) -> tuple[Any, str, Callable[[Any], Any] | None]:
    """The direct solve: ``(x, method, solver to reuse for refinement or None)``; raises
    ArithmeticError or ValueError (LinAlgError) when the matrix is singular."""
    if structure in ("lower", "upper"):
        run = _triangular_solver(xp, a, structure == "lower")
        x, method = run(b), f"triangular ({structure})"
    elif structure == "spd" and (chol := _cholesky_solver(xp, a)) is not None:
        run, x, method = chol, chol(b), "Cholesky"
    else:
        x = _lu_solve(xp, a, b)
        return x, "LU" if structure == "general" else "LU (Cholesky broke down)", None
    if not _finite(xp, x):
        raise ArithmeticError(f"{method} solve gave non-finite values")
    return x, method, run


def _as_float(xp: Any, a: Any, b: Any) -> tuple[Any, Any]:
    """Both in their common dtype if it is float32/64 or complex64/128; integers and bools
    become float64, float16 float32; anything else (longdouble) is refused."""
    dt = xp.result_type(a.dtype, b.dtype)
    name = getattr(dt, "name", str(dt))
    if name == "float16":
        dt = xp.float32
    elif xp.isdtype(dt, ("integral", "bool")):
        dt = xp.float64
    elif name not in ("float32", "float64", "complex64", "complex128"):
        raise InputError(f"solve: dtype {name} is not supported; use float64 (or float32)")
    return xp.astype(a, dt, copy=False), xp.astype(b, dt, copy=False)


def _backward_error(xp: Any, r: Any, x: Any, norm_a: float) -> float:
    """``max_j |r_j| / (|a| |x_j|)`` over the columns of ``x`` (2-norms)."""
    rn = xp.linalg.vector_norm(r, axis=0)
    den = norm_a * xp.linalg.vector_norm(x, axis=0)
    ok = den > 0
    ratio = xp.where(ok, rn / xp.where(ok, den, 1.0), xp.where(rn > 0, xp.inf, 0.0))
    return _float(xp.max(ratio))


_NOT_REGULARIZATION = (
    "Regularization (Tikhonov, truncated SVD) is no fix for accuracy: it solves a "
    "different, better-conditioned problem, whose answer is not the solution of this one."
)


def _advice(s: Solved) -> str:
    """What the ill-conditioning warning of :func:`solve` says it did and what to trust."""
    be = f"relative residual |b - a x| / (|a| |x|) = {s.backward_error:.2g}"
    if s.method.startswith("tsvd (singular"):
        return f"The matrix is singular: used {s.method}, the minimum-norm least-squares x ({be})."
    if "(SVD)" in s.method:
        return (
            f"Used {s.method}: a regularized answer to a different problem, not the solution "
            f"of a x = b ({be}); it bounds |x|, it does not make x more accurate."
        )
    text = (
        f"Used {s.method}; {be}; forward error bound cond * eps = {s.error_bound:.2g} "
        "(the relative error a backward-stable solve may have; >= 1: no digit guaranteed)"
    )
    if s.refinement_steps and math.isfinite(s.error_estimate):
        text += (
            f"; the last refinement correction was {s.error_estimate:.2g} of |x| (an "
            "estimate of the error left, not a bound)"
        )
    elif s.refinement_steps:
        text += "; refinement stopped before converging: no estimate of the error left"
    more = (
        "For more digits, solve with the factor itself (a Cholesky or triangular factor) "
        "instead of the matrix formed from it, or give a and b in higher precision."
    )
    return f"{text}. {_NOT_REGULARIZATION} {more}"


#: Refinement has converged when its last correction is within this many eps of |x|.
_CONVERGED = 16


def _refined(steps: int, estimate: float, eps: float, dtype: Any) -> str:
    """What refinement did, for ``Solved.method``."""
    if not steps:
        return " (iterative refinement made no progress)"
    done = "converged" if estimate <= _CONVERGED * eps else "stopped before converging"
    return (
        f" + iterative refinement ({steps} step{'s' * (steps != 1)}, residuals in "
        f"{residual_precision(dtype)}, {done})"
    )


def solve(
    a: Any,
    b: Any,
    *,
    assume: str = "auto",
    triangular: str | None = None,
    refine: bool | None = None,
    regularize: str | None = None,
    singular: str = "tsvd",
    warn: bool = True,
) -> Solved:
    """Solve ``a @ x = b`` for square ``a`` with the solver that fits ``a``, never an
    explicit inverse, and say how accurate ``x`` is.

    Parameters
    ----------
    a
        ``(n, n)`` matrix (NumPy or CuPy); integers become float64.
    b
        ``(n,)`` or ``(n, k)`` right-hand side.
    assume
        ``"auto"`` (default): a matrix that is exactly zero above (below) the diagonal is
        solved by triangular substitution (``solve_triangular``); a real, exactly symmetric
        one with a positive diagonal by Cholesky (LU if Cholesky breaks down); anything else
        by LU with partial pivoting. ``"general"`` (LU), ``"spd"`` (Cholesky, an error if it
        breaks down) and ``"triangular"`` force one.
    triangular
        ``"lower"`` or ``"upper"``: solve with that triangle of ``a`` only (SciPy's
        ``solve_triangular`` convention; the other triangle is not read).
    refine
        Iterative refinement with the residual ``b - a x`` computed in twice the working
        precision (double-double for float64, float64 for float32), reusing the
        factorization. None (default): when ``cond * eps >= sqrt(eps)``, i.e. when
        conditioning costs half the digits or more.
    regularize
        ``"tikhonov"`` (minimiser of ``|a x - b|^2 + lam^2 |x|^2``, ``lam = eps * s_max``)
        or ``"tsvd"`` (singular values below ``eps * n * s_max`` dropped): the answer to a
        *different* problem, with a bounded norm. It is no fix for an inaccurate answer:
        on the cond ~1e16 test systems it was 1e15 times further from the solution.
    singular
        ``"tsvd"`` (default): an exactly singular matrix gets the minimum-norm least-squares
        answer by truncated SVD, with a warning; ``"raise"``: an :class:`InputError`.

    Returns
    -------
    Solved
        ``x`` (shape of ``b``), ``cond`` (2-norm), ``method``, ``residual`` ``|a x - b|``
        (working precision), ``backward_error`` ``|b - a x| / (|a| |x|)`` (residual in
        twice the working precision for float32/64), ``error_bound`` ``cond * eps``,
        ``refinement_steps`` and ``error_estimate`` (the last correction over ``|x|``).

    Notes
    -----
    A backward-stable solve returns the exact solution of a system within
    ``backward_error`` of this one; its relative forward error is at most about
    ``cond * eps``, to first order. Triangular substitution is often far more accurate
    than that bound (Higham, ch. 8); refinement with accurate residuals converges to the
    correctly rounded ``x`` whenever the solver's error contracts. Measured
    (``tests/pipeline/test_solve_accuracy.py``): on 128x128 Cholesky factors with cond
    1e16, ``solve_triangular`` has forward error 0.16-0.18 and cubepipe <= 1e-16 after
    3 steps; on cond ~1e16 SPD and general matrices Cholesky/LU alone have 0.03-0.12 and
    10-20 steps reach ~1e-16. Residuals in ``np.longdouble`` (80-bit on x86) stalled
    near 1e-4 on the same factors and are not used. Past cond ~1e17 LU refinement stops
    without converging and ``error_estimate`` is NaN.
    """
    xp = array_namespace(a, b)
    _square(a, "solve")
    n = a.shape[0]
    if b.ndim not in (1, 2) or b.shape[0] != n:
        raise InputError(
            f"solve: b must have shape ({n},) or ({n}, k) for a {n}x{n} matrix; "
            f"got shape {tuple(b.shape)}"
        )
    if regularize not in (None, "tikhonov", "tsvd"):
        raise InputError(f"regularize must be None, 'tikhonov' or 'tsvd'; got {regularize!r}")
    if singular not in ("tsvd", "raise"):
        raise InputError(f"singular must be 'tsvd' or 'raise'; got {singular!r}")
    if n == 0:
        raise InputError("solve: the matrix is empty (0x0)")
    a, b = _as_float(xp, a, b)
    structure = _structure(xp, a, assume, triangular)
    if structure in ("lower", "upper"):  # the triangle solved is the matrix: cond, residual
        a = xp.tril(a) if structure == "lower" else xp.triu(a)
    if not (_finite(xp, a) and _finite(xp, b)):
        raise NonFiniteError("solve: a and b must be finite; they hold NaN or inf")
    sv = xp.linalg.svdvals(a)
    smax, smin = _float(xp.max(sv)), _float(xp.min(sv))
    c = math.inf if smin == 0 else smax / smin
    eps = _eps(xp, a.dtype)
    ill = not c * eps < 1
    steps, estimate = 0, float("nan")
    if regularize:
        x, method = _svd_solve(xp, a, b, regularize), f"{regularize} (SVD)"
    else:
        try:
            x, method, run = _direct(xp, a, b, structure)
        except (ArithmeticError, ValueError) as exc:  # exactly singular
            if singular == "raise":
                raise InputError(
                    f"solve: the matrix is singular (condition number {c:.3g}): {exc}"
                ) from exc
            x, method, run = _svd_solve(xp, a, b, "tsvd"), "tsvd (singular matrix)", None
        else:
            if assume == "spd" and method != "Cholesky":
                raise InputError(
                    "solve: assume='spd' but the matrix is not numerically positive "
                    "definite (Cholesky broke down); use assume='general'"
                )
            if (c * eps >= math.sqrt(eps)) if refine is None else refine:
                x, steps, estimate = _refine(xp, a, b, x, run or _lu_solver(xp, a), eps)
                method += _refined(steps, estimate, eps, a.dtype)
                if not estimate <= _CONVERGED * eps:  # stopped early: no estimate to trust
                    estimate = float("nan")
    x2 = x[:, None] if x.ndim == 1 else x
    r = accurate_residual(xp, a, x2, b[:, None] if b.ndim == 1 else b)
    out = Solved(
        x,
        c,
        method,
        _residual(xp, a, x, b),
        _backward_error(xp, r, x2, smax),
        c * eps,
        steps,
        estimate,
    )
    if ill and warn:
        _warn("solve", c, a.dtype, _advice(out))
    return out


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
