"""Singular and non-positive-definite matrices take the same stated fallback, with the
same warning, on the GPU as on the CPU (cuSOLVER does not raise by default: CuPy returns
NaN from solve and an unfinished factor from cholesky)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cubepipe.pipeline.linalg import cholesky, solve
from cubepipe.storage.errors import CubepipeWarning

pytestmark = pytest.mark.gpu


def _on_both(fn, *host_args):  # type: ignore[no-untyped-def]
    import cupy  # noqa: PLC0415

    out = []
    for args in (host_args, tuple(cupy.asarray(a) for a in host_args)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CubepipeWarning)
            res = fn(*args)
        out.append((res, [str(w.message).split(";")[0] for w in caught]))
    return out


def _host(a):  # type: ignore[no-untyped-def]
    return a.get() if hasattr(a, "get") else a


def test_singular_solve_falls_back_to_truncated_svd_on_both() -> None:
    a = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]])  # rank 2
    b = np.array([1.0, 2.0, 0.5])
    (cpu, w_cpu), (gpu, w_gpu) = _on_both(solve, a, b)
    assert cpu.method == gpu.method == "tsvd (singular matrix)"
    assert w_cpu == w_gpu and len(w_cpu) == 1
    x = _host(gpu.x)
    assert np.all(np.isfinite(x))
    # the minimum-norm least-squares solution, from NumPy's pseudo-inverse-free lstsq
    ref = np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(x, ref, rtol=1e-10, atol=1e-12)


def test_well_conditioned_solve_is_lu_on_both() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6)) + 6 * np.eye(6)
    b = rng.normal(size=6)
    (cpu, w_cpu), (gpu, w_gpu) = _on_both(solve, a, b)
    assert cpu.method == gpu.method == "LU" and w_cpu == w_gpu == []
    np.testing.assert_allclose(_host(gpu.x), np.linalg.solve(a, b), rtol=1e-12)


def test_non_positive_definite_cholesky_jitters_on_both() -> None:
    a = np.array([[4.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])  # singular PSD
    a[1, 1] -= 1e-3  # now indefinite: potrf stops at the second pivot
    (cpu, w_cpu), (gpu, w_gpu) = _on_both(cholesky, a)
    assert cpu.jitter == gpu.jitter > 0
    assert w_cpu == w_gpu and len(w_cpu) == 1
    factor = _host(gpu.factor)
    np.testing.assert_allclose(factor @ factor.T, a + gpu.jitter * np.eye(3), atol=1e-10)
    np.testing.assert_allclose(factor, _host(cpu.factor), rtol=1e-12)
