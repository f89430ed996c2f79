"""``cubepipe solve A.npy b.npy``: solve ``A x = b`` with the solver that fits ``A`` and
say how far to trust ``x``: condition number, relative residual, error bound, method.

The ``.npy`` files are read with ``allow_pickle=False``: a file holding pickled objects is
refused, never unpickled. Bad input (not a square matrix, shapes that do not match, NaN or
inf, a singular matrix) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import click
import numpy as np

from cubepipe.storage.errors import CubepipeWarning, InputError, NonFiniteError

from ..linalg import ASSUME, Solved, solve
from ._app import CliState, cli, pass_state
from ._io import LocalPath, json_option

__all__ = ["load_npy", "solve_cmd"]

#: dtypes solved as they are; integers and bools become float64, float16 float32.
_KEEP = ("float32", "float64", "complex64", "complex128")


def load_npy(path: Path, what: str) -> np.ndarray:
    """A numeric array from a ``.npy`` file, never unpickling anything."""
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:  # pickled data, object arrays: refused by allow_pickle=False
        raise InputError(
            f"{what} {path}: not a plain .npy array ({' '.join(str(exc).split())}); "
            "cubepipe never unpickles files: save a numeric array with numpy.save"
        ) from exc
    except (OSError, EOFError) as exc:
        raise InputError(f"{what} {path}: cannot be read as .npy ({exc})") from exc
    if not isinstance(arr, np.ndarray):  # a .npz archive
        arr.close()
        raise InputError(f"{what} {path}: a .npz archive; give one array saved with numpy.save")
    kind = arr.dtype.kind
    if kind not in "biufc" or arr.dtype.fields is not None:
        raise InputError(f"{what} {path}: dtype {arr.dtype} is not a number type")
    if arr.dtype.name in _KEEP:
        return arr
    if kind in "fc" and arr.dtype.itemsize > 8 * (2 if kind == "c" else 1):
        raise InputError(
            f"{what} {path}: {arr.dtype} is not supported (the solvers work in float64 at "
            "most); save it as float64, or keep the extra precision elsewhere"
        )
    return arr.astype(np.float32 if arr.dtype == np.float16 else np.float64)


def _check(a: np.ndarray, b: np.ndarray, a_path: Path, b_path: Path) -> None:
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise InputError(f"A {a_path}: expected a square matrix (n, n); got shape {a.shape}")
    n = a.shape[0]
    if b.ndim not in (1, 2) or b.shape[0] != n:
        raise InputError(
            f"b {b_path}: shape {b.shape} does not match A's {n} rows; expected ({n},) or ({n}, k)"
        )
    for what, path, arr in (("A", a_path, a), ("b", b_path, b)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise NonFiniteError(
                f"{what} {path}: {bad} NaN/inf value(s); solve needs finite numbers"
            )


def _num(v: float) -> float | None:
    """A float for JSON: inf and NaN (not JSON) become null."""
    return v if math.isfinite(v) else None


def _host(x: Any) -> np.ndarray:
    return np.asarray(x.get() if hasattr(x, "get") else x)


def _write(output: Path, x: np.ndarray) -> None:
    """Write ``x`` to exactly ``output`` (no ``.npy`` appended), whole or not at all."""
    tmp = output.with_name(f".{output.name}.cubepipe-tmp")
    with open(tmp, "wb") as f:
        np.save(f, x, allow_pickle=False)
    os.replace(tmp, output)


def _summary(r: Solved, x: np.ndarray, output: Path | None, notes: list[str]) -> dict[str, Any]:
    return {
        "method": r.method,
        "n": int(x.shape[0]),
        "nrhs": int(x.shape[1]) if x.ndim == 2 else None,
        "dtype": str(x.dtype),
        "cond": _num(r.cond),
        "relative_residual": _num(r.backward_error),
        "residual_norm": _num(r.residual),
        "error_bound": _num(r.error_bound),
        "refinement_steps": r.refinement_steps,
        "error_estimate": _num(r.error_estimate),
        "output": str(output) if output else None,
        "x": None if output else x.tolist(),
        "warnings": notes,
    }


def _text(d: dict[str, Any], x: np.ndarray) -> str:
    def g(v: float | None) -> str:
        return "inf" if v is None else f"{v:.3g}"

    lines = [
        f"method          {d['method']}",
        f"condition       {g(d['cond'])}  (2-norm: largest / smallest singular value)",
        f"residual        {g(d['relative_residual'])}  |b - A x| / (|A| |x|), residual "
        "computed in twice the working precision",
        f"error bound     {g(d['error_bound'])}  cond * eps: the relative error of x a "
        "backward-stable solve may have (>= 1: no digit guaranteed)",
    ]
    if d["refinement_steps"] and d["error_estimate"] is not None:
        lines.append(
            f"error estimate  {g(d['error_estimate'])}  last of {d['refinement_steps']} "
            "refinement corrections / |x| (an estimate of the error left, not a bound)"
        )
    elif d["refinement_steps"]:
        lines.append("error estimate  -  refinement stopped before converging")
    if d["output"]:
        lines.append(f"x               written to {d['output']} {x.shape} {x.dtype}")
    else:
        lines.append("x")
        rows = x if x.ndim == 2 else x[:, None]
        lines += [" ".join(f"{v!r}" for v in row.tolist()) for row in rows]
    return "\n".join(lines)


@cli.command("solve")
@click.argument("a_path", metavar="A.npy", type=LocalPath(path_type=Path))
@click.argument("b_path", metavar="B.npy", type=LocalPath(path_type=Path))
@click.option(
    "--triangular",
    type=click.Choice(["lower", "upper"]),
    help="Solve with this triangle of A only (the other is not read), e.g. a Cholesky factor.",
)
@click.option(
    "--assume",
    type=click.Choice(ASSUME),
    default="auto",
    show_default=True,
    help="auto: triangular if A is exactly zero above/below the diagonal, Cholesky if "
    "exactly symmetric with a positive diagonal (LU if Cholesky breaks down), else LU.",
)
@click.option(
    "--refine/--no-refine",
    default=None,
    help="Iterative refinement with residuals in twice the working precision "
    "(default: when cond * eps >= sqrt(eps)).",
)
@click.option(
    "-o",
    "--output",
    type=LocalPath(path_type=Path),
    help="Write x to this .npy file (default: print x).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@json_option
@pass_state
def solve_cmd(
    state: CliState,
    a_path: Path,
    b_path: Path,
    triangular: str | None,
    assume: str,
    refine: bool | None,
    output: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Solve A x = b (A from A.npy, b from B.npy) without ever forming an inverse; print
    the method, the condition number, the relative residual and the error bound.

    A triangular A (a Cholesky factor) is solved by substitution, a symmetric positive
    definite one by Cholesky, others by LU; refinement with accurate residuals then
    recovers the digits the conditioning would cost. JSON keys: method, n, nrhs, dtype,
    cond, relative_residual, residual_norm, error_bound, refinement_steps, error_estimate,
    output, x (null with -o), warnings (null where a number is inf or NaN).
    """
    if output is not None:
        if output.is_dir():
            raise InputError(f"{output} is a folder; give a file name for x, e.g. x.npy")
        if output.exists() and not overwrite:
            raise InputError(f"{output} exists; pass --overwrite to replace it")
        if not output.parent.is_dir():
            raise InputError(f"{output}: the folder {output.parent} does not exist")
    a = load_npy(a_path, "A")
    b = load_npy(b_path, "b")
    _check(a, b, a_path, b_path)
    state.say(f"cubepipe: device {state.device.reason}")
    xp = state.device.xp
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CubepipeWarning)
        r = solve(
            xp.asarray(a),
            xp.asarray(b),
            assume=assume,
            triangular=triangular,
            refine=refine,
            singular="raise",
        )
    notes = []
    for w in caught:
        if issubclass(w.category, CubepipeWarning):
            notes.append(" ".join(str(w.message).split()))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    x = _host(r.x)
    if output is not None:
        _write(output, x)
    d = _summary(r, x, output, notes)
    for note in notes:
        click.echo(f"cubepipe: warning: {note}", err=True)
    click.echo(json.dumps(d, indent=2) if as_json else _text(d, x))
