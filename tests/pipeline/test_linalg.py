"""Linear algebra that reports its condition number and never inverts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cubepipe.pipeline.linalg import cholesky, cond, eigh, lstsq, solve
from cubepipe.storage import CubepipeWarning, InputError


def _matrix(n: int, cond_number: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    v, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (u * np.logspace(0, -np.log10(cond_number), n)) @ v.T


def test_the_classic_inaccurate_inverse_case() -> None:
    a = _matrix(128, 1e16)
    b = np.random.default_rng(1).normal(size=128)
    with pytest.warns(CubepipeWarning, match=r"condition number .* beyond what float64"):
        r = solve(a, b)
    ref = np.linalg.cond(a)
    assert abs(r.cond - ref) / ref < 0.10
    via_inverse = np.linalg.norm(a @ (np.linalg.inv(a) @ b) - b)
    assert r.residual <= via_inverse
    assert r.residual == pytest.approx(np.linalg.norm(a @ r.x - b))
    assert "refinement" in r.method


def test_well_conditioned_solve_is_quiet_and_exact() -> None:
    a = _matrix(50, 1e3)
    x = np.arange(50.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = solve(a, a @ x)
    np.testing.assert_allclose(r.x, x, rtol=1e-9, atol=1e-9)
    assert r.method == "LU"
    assert r.cond == pytest.approx(1e3, rel=1e-6)


@pytest.mark.parametrize("how", ["tikhonov", "tsvd"])
def test_regularized_solves_bound_the_norm(how: str) -> None:
    a = _matrix(64, 1e18)
    b = np.random.default_rng(2).normal(size=64)
    with pytest.warns(CubepipeWarning, match=how):
        r = solve(a, b, regularize=how)
    assert np.linalg.norm(r.x) < 1e17 / 4
    assert how in r.method


def test_float32_threshold_is_its_own() -> None:
    a = _matrix(20, 1e8).astype(np.float32)
    with pytest.warns(CubepipeWarning, match="float32"):
        solve(a, np.ones(20, np.float32))


def test_singular_matrix_falls_back_to_tsvd() -> None:
    a = np.array([[1.0, 2.0], [2.0, 4.0]])
    with pytest.warns(CubepipeWarning):
        r = solve(a, np.array([1.0, 2.0]))
    assert r.cond == float("inf") or r.cond > 1e15
    np.testing.assert_allclose(a @ r.x, [1.0, 2.0], atol=1e-12)


def test_lstsq_reports_rank() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(30, 5)) @ rng.normal(size=(5, 8))  # rank 5
    b = rng.normal(size=30)
    with pytest.warns(CubepipeWarning, match="rank 5 of 8"):
        r = lstsq(a, b)
    assert r.rank == 5
    ref = np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(r.x, ref, atol=1e-10)


def test_eigh_descending_with_condition() -> None:
    a = np.diag([1.0, 10.0, 1e-3])
    e = eigh(a)
    np.testing.assert_allclose(e.values, [10.0, 1.0, 1e-3])
    assert e.cond == pytest.approx(1e4)
    np.testing.assert_allclose(np.abs(e.vectors[:, 0]), [0, 1, 0], atol=1e-15)


def test_cholesky_jitter_on_semidefinite() -> None:
    v = np.array([[1.0, 1.0], [1.0, 1.0]])  # rank 1: not positive definite
    with pytest.warns(CubepipeWarning, match="Tikhonov"):
        c = cholesky(v)
    assert c.jitter > 0
    np.testing.assert_allclose(c.factor @ c.factor.T, v + c.jitter * np.eye(2), atol=1e-12)
    good = cholesky(np.array([[4.0, 2.0], [2.0, 3.0]]))
    assert good.jitter == 0


def test_bad_shapes_and_options() -> None:
    with pytest.raises(InputError, match="square"):
        solve(np.ones((2, 3)), np.ones(2))
    with pytest.raises(InputError, match="regularize"):
        solve(np.eye(2), np.ones(2), regularize="ridge")
    assert cond(np.eye(3)) == 1.0


def test_no_explicit_inverse_in_the_code_base() -> None:
    import re  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    root = Path(__file__).resolve().parents[2]
    pattern = re.compile(r"(linalg\.inv\(|[^_a-z.]inv\()")
    hits = [
        f"{p}:{i}"
        for top in ("pipeline", "storage")
        for p in (root / top).rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []
