""" "My matrix inverse is inaccurate" (issue 18, Q6), asked by someone holding a Cholesky
factor: on 128x128 Cholesky factors with cond ~1e16, cubepipe's ``solve`` against
``numpy.linalg.inv(L) @ b``, ``numpy.linalg.solve``, ``scipy.linalg.solve_triangular``
and the exact solution, and what its warning advises.

The reference is exact and independent of every solver here: the float64 entries of L
and b are rationals, and forward substitution in :class:`fractions.Fraction` is exact.
Forward error = ``|x - x_exact|_inf / |x_exact|_inf``.
"""

from __future__ import annotations

import re
import warnings
from fractions import Fraction

import numpy as np
import pytest
import scipy.linalg

from cubepipe.pipeline.linalg import solve
from cubepipe.storage import CubepipeWarning, InputError
from cubepipe.storage.errors import NonFiniteError

N = 128


def cholesky_factor(seed: int, n: int = N, cond: float = 1e16) -> np.ndarray:
    """Lower Cholesky factor L of the graded SPD matrix ``M = V diag(s)^2 V^T``,
    ``s = logspace(0, -log10(cond), n)``, V random orthogonal (seeded), cond(L) ~ cond.

    M (cond ~cond^2) is never formed: ``M = (S V^T)^T (S V^T) = R^T R`` with R from the QR
    factorization of ``S V^T``, so L is R^T with its diagonal made positive. L is then
    exactly the Cholesky factor of ``L L^T``.
    """
    rng = np.random.default_rng(seed)
    v, _ = np.linalg.qr(rng.normal(size=(n, n)))
    r = np.linalg.qr(np.logspace(0, -np.log10(cond), n)[:, None] * v.T, mode="r")
    return np.ascontiguousarray((r * np.sign(np.diag(r))[:, None]).T)


def exact_lower_solve(low: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact solution of ``low x = b`` (lower triangular), rounded to float64 once."""
    x: list[Fraction] = []
    for i in range(low.shape[0]):
        s = Fraction(float(b[i]))
        for j, lij in enumerate(low[i, :i].tolist()):
            if lij:
                s -= Fraction(lij) * x[j]
        x.append(s / Fraction(float(low[i, i])))
    return np.array([float(v) for v in x])


def forward_error(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(x - ref)) / np.max(np.abs(ref)))


def _longdouble_refined(low: np.ndarray, b: np.ndarray, steps: int = 10) -> np.ndarray:
    """The alternative we measured and dropped: refinement with np.longdouble residuals."""
    x = scipy.linalg.solve_triangular(low, b, lower=True)
    ll, bl = low.astype(np.longdouble), b.astype(np.longdouble)
    for _ in range(steps):
        r = (bl - ll @ x.astype(np.longdouble)).astype(np.float64)
        x = x + scipy.linalg.solve_triangular(low, r, lower=True)
    return x


@pytest.fixture(scope="module", params=[0, 1], ids=["seed0", "seed1"])
def system(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    low = cholesky_factor(request.param)
    b = low @ np.ones(N)  # x ~ ones: the answer is not just the worst-conditioned direction
    return low, b, exact_lower_solve(low, b)


def test_cubepipe_beats_inv_solve_and_solve_triangular(system) -> None:  # type: ignore[no-untyped-def]
    low, b, ref = system
    cond = float(np.linalg.cond(low))
    assert 5e15 < cond < 2e16, cond
    with pytest.warns(CubepipeWarning) as caught:
        r = solve(low, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CubepipeWarning)
        tik = solve(low, b, regularize="tikhonov").x
        tsvd = solve(low, b, regularize="tsvd").x
        unrefined = solve(low, b, refine=False).x
    errors = {
        "numpy inv(L) @ b": forward_error(np.linalg.inv(low) @ b, ref),
        "numpy.linalg.solve": forward_error(np.linalg.solve(low, b), ref),
        "scipy solve_triangular": forward_error(
            scipy.linalg.solve_triangular(low, b, lower=True), ref
        ),
        "longdouble refinement": forward_error(_longdouble_refined(low, b), ref),
        "cubepipe solve": forward_error(r.x, ref),
        "cubepipe regularize=tikhonov": forward_error(tik, ref),
        "cubepipe regularize=tsvd": forward_error(tsvd, ref),
    }
    print(f"cond(L) = {cond:.3g}; {r.method}")  # the table (pytest -s, or on failure)
    for name, e in errors.items():
        print(f"  {name:<30} {e:.2e}")
    eps = np.finfo(np.float64).eps
    assert r.method.startswith("triangular (lower) + iterative refinement")
    assert "converged" in r.method and r.refinement_steps <= 5
    # the direct part is scipy's solve_triangular itself; refinement takes it to the
    # correctly rounded answer (the exact x rounded once is what `ref` holds)
    np.testing.assert_array_equal(
        unrefined, scipy.linalg.solve_triangular(low, b, lower=True, check_finite=False)
    )
    assert errors["cubepipe solve"] <= errors["scipy solve_triangular"]
    assert errors["cubepipe solve"] <= 4 * eps
    assert errors["scipy solve_triangular"] > 1e-3  # the system is genuinely hard
    assert errors["cubepipe solve"] <= errors["longdouble refinement"]
    assert errors["numpy inv(L) @ b"] >= errors["scipy solve_triangular"]
    # what cubepipe reports agrees with what happened
    assert r.error_bound == pytest.approx(r.cond * eps)
    assert r.error_estimate <= 16 * eps
    assert r.backward_error <= 4 * eps
    assert r.backward_error == pytest.approx(
        float(np.linalg.norm(b - low @ r.x) / (np.linalg.norm(low, 2) * np.linalg.norm(r.x))),
        rel=1.0,
        abs=4 * eps,
    )
    # the advice: regularization changes the problem, and here it makes x much worse
    for how in ("tikhonov", "tsvd"):
        worse = errors[f"cubepipe regularize={how}"]
        assert worse > errors["scipy solve_triangular"]
        assert worse > 1e12 * max(errors["cubepipe solve"], eps)
    (message,) = [str(w.message) for w in caught if issubclass(w.category, CubepipeWarning)]
    _assert_advice_is_safe(message)


def _assert_advice_is_safe(message: str) -> None:
    """The warning states the numbers and never advises what makes the error worse: no
    regularization, no inverse."""
    assert re.search(r"relative residual .* = [0-9.e+-]+", message)
    assert re.search(r"cond \* eps = [0-9.e+-]+", message)
    assert "different" in message and "no fix for accuracy" in message
    recommends = re.compile(
        r"(pass|use|try|set|with)\s+(regularize|--regularize|tikhonov|tsvd|inv)"
        r"|regularize\s*=|'tikhonov'|'tsvd'|inv\(",
        re.IGNORECASE,
    )
    assert not recommends.search(message), message


def test_upper_triangular_is_back_substitution(system) -> None:  # type: ignore[no-untyped-def]
    low, b, ref = system
    up = np.ascontiguousarray(low[::-1, ::-1])  # U = P L P (P reverses), U x' = P b
    with pytest.warns(CubepipeWarning):
        r = solve(up, b[::-1].copy())
    assert r.method.startswith("triangular (upper)")
    assert forward_error(r.x[::-1], ref) <= 4 * np.finfo(np.float64).eps


def test_overrides_and_detection() -> None:
    low = cholesky_factor(2, n=24, cond=1e6)
    b = np.arange(1.0, 25.0)
    spd = low @ low.T
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cond 1e6 (1e12 for spd) resolves in float64: quiet
        assert solve(low, b).method.startswith("triangular (lower)")
        assert solve(low, b, assume="general").method.startswith("LU")
        assert solve(spd, b).method.startswith("Cholesky")
        assert solve(spd, b, assume="general").method.startswith("LU")
        full = low + np.triu(np.ones((24, 24)), 1)  # only the lower triangle is read
        r = solve(full, b, triangular="lower")
        assert r.method.startswith("triangular (lower)")
        np.testing.assert_allclose(r.x, solve(low, b).x, rtol=0, atol=0)
        assert solve(low.T, b, assume="triangular").method.startswith("triangular (upper)")


def test_refinement_in_float32_uses_float64_residuals() -> None:
    low = cholesky_factor(3, n=64, cond=1e7).astype(np.float32)
    b = (low.astype(np.float64) @ np.ones(64)).astype(np.float32)
    ref = exact_lower_solve(low, b)
    with pytest.warns(CubepipeWarning, match="float32"):
        r = solve(low, b)
    assert r.x.dtype == np.float32
    assert "residuals in float64" in r.method
    plain = scipy.linalg.solve_triangular(low, b, lower=True)
    assert forward_error(r.x, ref) <= min(forward_error(plain, ref), 4 * np.finfo(np.float32).eps)


def test_spd_system_against_mpmath() -> None:
    mpmath = pytest.importorskip("mpmath")
    n = 40
    rng = np.random.default_rng(4)
    v, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = (v * np.logspace(0, -16, n)) @ v.T  # cond 1.2e16
    a = (a + a.T) / 2
    b = a @ np.ones(n)
    mpmath.mp.dps = 50
    exact = mpmath.lu_solve(mpmath.matrix(a.tolist()), mpmath.matrix(b.tolist()))
    ref = np.array([float(exact[i]) for i in range(n)])
    with pytest.warns(CubepipeWarning) as caught:
        r = solve(a, b)
    assert r.method.startswith("Cholesky + iterative refinement")
    assert forward_error(r.x, ref) <= min(forward_error(np.linalg.solve(a, b), ref), 1e-15)
    _assert_advice_is_safe(str(caught[0].message))


def test_never_calls_an_inverse(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("an explicit inverse was formed")

    monkeypatch.setattr(np.linalg, "inv", refuse)
    monkeypatch.setattr(scipy.linalg, "inv", refuse)
    low = cholesky_factor(0, n=32, cond=1e12)
    for a in (low, low @ low.T, low + np.triu(np.ones((32, 32)), 1)):
        solve(a, np.ones(32), warn=False)


def test_bad_input_is_an_input_error() -> None:
    low = np.tril(np.ones((3, 3)))
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        solve(np.where(np.eye(3) > 0, np.nan, low), np.ones(3))
    with pytest.raises(InputError, match=r"b must have shape \(3,\)"):
        solve(low, np.ones(4))
    singular = low.copy()
    singular[1, 1] = 0.0
    with pytest.raises(InputError, match="singular"):
        solve(singular, np.ones(3), singular="raise")
    with pytest.warns(CubepipeWarning, match="singular"):
        assert solve(singular, np.ones(3)).method == "tsvd (singular matrix)"
    with pytest.raises(InputError, match="symmetric"):
        solve(low, np.ones(3), assume="spd")
    with pytest.raises(InputError, match="positive definite"):
        solve(np.array([[1.0, 2.0], [2.0, 1.0]]), np.ones(2), assume="spd")
    with pytest.raises(InputError, match="contradicts"):
        solve(low, np.ones(3), assume="general", triangular="lower")
    with pytest.raises(InputError, match="both above and below"):
        solve(np.ones((3, 3)) + np.eye(3), np.ones(3), assume="triangular")
    with pytest.raises(InputError, match="assume must be"):
        solve(low, np.ones(3), assume="hermitian")


@pytest.mark.gpu
def test_structured_solves_match_on_the_gpu() -> None:
    import cupy  # noqa: PLC0415

    low = cholesky_factor(0)
    b = low @ np.ones(N)
    for a in (low, low.T.copy(), low[:24, :24] @ low[:24, :24].T):
        rhs = b[: a.shape[0]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CubepipeWarning)
            cpu = solve(a, rhs)
            gpu = solve(cupy.asarray(a), cupy.asarray(rhs))
        assert gpu.method.split(" (")[0] == cpu.method.split(" (")[0]
        np.testing.assert_allclose(gpu.x.get(), cpu.x, rtol=1e-12, atol=1e-12)
