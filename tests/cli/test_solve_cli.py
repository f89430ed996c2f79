"""`cubepipe solve A.npy b.npy`: the inaccurate-inverse question answered from the command
line, on the 128x128 cond ~1e16 Cholesky factor of tests/pipeline/test_solve_accuracy.py."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from tests.pipeline.test_solve_accuracy import (
    _assert_advice_is_safe,
    cholesky_factor,
    exact_lower_solve,
    forward_error,
)

KEYS = {
    "method",
    "n",
    "nrhs",
    "dtype",
    "cond",
    "relative_residual",
    "residual_norm",
    "error_bound",
    "refinement_steps",
    "error_estimate",
    "output",
    "x",
    "warnings",
}


@pytest.fixture(scope="module")
def factor_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    d = tmp_path_factory.mktemp("solve")
    low = cholesky_factor(0)
    b = low @ np.ones(low.shape[0])
    np.save(d / "L.npy", low)
    np.save(d / "b.npy", b)
    return d / "L.npy", d / "b.npy", exact_lower_solve(low, b)


def test_solve_prints_method_cond_residual_bound(cli, factor_files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a_path, b_path, ref = factor_files
    out = tmp_path / "x.npy"
    proc = cli("solve", str(a_path), str(b_path), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    fields = dict(
        line.split(None, 1) for line in proc.stdout.replace("error ", "error_").splitlines()
    )
    assert fields["method"].startswith("triangular (lower) + iterative refinement")
    assert float(fields["condition"].split()[0]) == pytest.approx(1e16, rel=0.5)
    assert float(fields["residual"].split()[0]) < 1e-15
    assert float(fields["error_bound"].split()[0]) == pytest.approx(2.2, rel=0.5)
    assert "written to" in fields["x"]
    x = np.load(out, allow_pickle=False)
    low = np.load(a_path)
    plain = scipy.linalg.solve_triangular(low, np.load(b_path), lower=True)
    assert forward_error(x, ref) <= forward_error(plain, ref)
    assert forward_error(x, ref) <= 4 * np.finfo(np.float64).eps
    (warning,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("cubepipe: warning:")]
    _assert_advice_is_safe(warning)


def test_solve_json_is_stable_and_complete(cli, factor_files) -> None:  # type: ignore[no-untyped-def]
    a_path, b_path, ref = factor_files
    proc = cli("--quiet", "solve", str(a_path), str(b_path), "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert set(d) == KEYS
    assert d["n"] == 128 and d["nrhs"] is None and d["dtype"] == "float64"
    assert d["output"] is None and len(d["x"]) == 128
    assert forward_error(np.array(d["x"]), ref) <= 4 * np.finfo(np.float64).eps
    assert d["error_bound"] == pytest.approx(d["cond"] * np.finfo(np.float64).eps)
    assert d["refinement_steps"] >= 1 and d["error_estimate"] < 1e-15
    (warning,) = d["warnings"]
    _assert_advice_is_safe(warning)


def test_solve_options_choose_the_solver(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    low = cholesky_factor(2, n=16, cond=1e3)
    full = low + np.triu(np.full((16, 16), 7.0), 1)
    np.save(tmp_path / "full.npy", full)
    np.save(tmp_path / "spd.npy", low @ low.T)
    np.save(tmp_path / "b.npy", np.arange(16.0))
    np.save(tmp_path / "B.npy", np.ones((16, 3), np.float32))

    def method(*args: str) -> str:
        proc = cli("--quiet", "solve", *args, "--json")
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout)["method"])

    full_path, spd, b = (str(tmp_path / n) for n in ("full.npy", "spd.npy", "b.npy"))
    assert method(full_path, b) == "LU"
    assert method(full_path, b, "--triangular", "lower").startswith("triangular (lower)")
    assert method(full_path, b, "--triangular", "upper").startswith("triangular (upper)")
    assert method(spd, b) == "Cholesky"
    assert method(spd, b, "--assume", "general") == "LU"
    proc = cli("--quiet", "solve", spd, str(tmp_path / "B.npy"), "--json")
    d = json.loads(proc.stdout)
    assert proc.returncode == 0 and d["nrhs"] == 3 and np.array(d["x"]).shape == (16, 3)


class _Payload:
    """Unpickling this would create a file: proof that nothing is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def _one_line_error(proc, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cubepipe: error:"), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_input_is_one_line_and_exit_2(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def save(name: str, arr: np.ndarray) -> str:
        np.save(tmp_path / name, arr)
        return str(tmp_path / name)

    sq = save("sq.npy", np.tril(np.ones((3, 3))))
    b3 = save("b3.npy", np.ones(3))
    run = ("--quiet", "solve")
    _one_line_error(cli(*run, save("rect.npy", np.ones((3, 4))), b3), "square", "(3, 4)")
    _one_line_error(cli(*run, sq, save("b4.npy", np.ones(4))), "does not match", "(4,)")
    _one_line_error(cli(*run, save("nan.npy", np.diag([1.0, np.nan, 1.0])), b3), "NaN")
    _one_line_error(cli(*run, sq, save("inf.npy", np.array([1.0, np.inf, 0.0]))), "NaN/inf")
    _one_line_error(cli(*run, save("sing.npy", np.diag([1.0, 0.0, 1.0])), b3), "singular")
    _one_line_error(cli(*run, str(tmp_path / "missing.npy"), b3), "no such file")
    _one_line_error(cli(*run, save("txt.npy", np.array(["a", "b"])), b3), "not a number type")
    np.savez(tmp_path / "ab.npz", a=np.eye(3))
    _one_line_error(cli(*run, str(tmp_path / "ab.npz"), b3), ".npz")
    _one_line_error(cli(*run, sq, b3, "--assume", "spd"), "symmetric")
    # untrusted files are never unpickled: an object .npy and a raw pickle
    np.save(tmp_path / "obj.npy", np.array([_Payload(tmp_path / "m1")], dtype=object))
    _one_line_error(cli(*run, str(tmp_path / "obj.npy"), b3), "never unpickles")
    (tmp_path / "raw.npy").write_bytes(pickle.dumps(_Payload(tmp_path / "m2")))
    _one_line_error(cli(*run, str(tmp_path / "raw.npy"), b3), "never unpickles")
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()
    # an existing output is refused before any work; --overwrite replaces it
    (tmp_path / "x.npy").write_bytes(b"keep")
    _one_line_error(cli(*run, sq, b3, "-o", str(tmp_path / "x.npy")), "--overwrite")
    assert (tmp_path / "x.npy").read_bytes() == b"keep"
    proc = cli(*run, sq, b3, "-o", str(tmp_path / "x.npy"), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), [1.0, 0.0, 0.0], atol=1e-15)
