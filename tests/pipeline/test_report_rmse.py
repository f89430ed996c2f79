"""The report's reconstruction error is measured against the input the model was fitted on
(issue 18): the demo's report shows the RMSE ``compress`` recorded, labelled with its
units, and the raw-unit error beside it.

References: NumPy (z-scores with the population std, PCA by ``numpy.linalg.eigh`` of the
covariance of the valid pixels) on the stores read with ``xarray.open_zarr``, and the
``results`` ``compress`` wrote in the store's history.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import write_cube

K = 5


def _metric(page: str, name: str) -> float:
    """The value of the ``data-metric=name`` row of the error table."""
    m = re.search(rf'<td data-metric="{name}">[^<]*</td><td class="n" data-value="([^"]+)"', page)
    assert m, f"no {name} row in the report's error table"
    return float(m.group(1))


def _recorded_rmse(store: Path) -> float:
    """What ``compress`` recorded, read with plain xarray."""
    entries = xr.open_zarr(store).attrs["cubepipe"]["history"]
    return float([h for h in entries if h["op"] == "compress"][-1]["results"]["rmse"])


def _numpy_pca(raw: np.ndarray, k: int) -> dict[str, Any]:
    """z-scores of ``raw`` (band, y, x), their rank-k PCA reconstruction, both RMSEs."""
    x = raw.reshape(raw.shape[0], -1).astype(np.float64)
    ok = np.isfinite(x).all(axis=0)
    v = x[:, ok]
    mean, std = v.mean(axis=1, keepdims=True), v.std(axis=1, keepdims=True)
    z = (v - mean) / std
    mu = z.mean(axis=1, keepdims=True)
    evals, evecs = np.linalg.eigh(np.cov(z))
    w = evecs[:, np.argsort(evals)[::-1][:k]]
    zhat = w @ (w.T @ (z - mu)) + mu
    xhat = zhat * std + mean
    return {
        "rmse": float(np.sqrt(np.mean((zhat - z) ** 2))),
        "rmse_raw": float(np.sqrt(np.mean((xhat - v) ** 2))),
        "wrong": float(np.sqrt(np.mean((zhat - v) ** 2))),  # the old report's comparison
        "n_values": int(v.size),
    }


def test_demo_report_shows_the_rmse_compress_recorded(cli, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = cli("-q", "demo", "--size", "small", "-o", str(out))
    assert r.returncode == 0, r.stderr
    page = (out / "demo-report.html").read_text()
    recorded = _recorded_rmse(out / "demo-pca.zarr")
    ref = _numpy_pca(xr.open_zarr(out / "demo.zarr")["cube"].values, K)
    # the same RMSE as compress recorded and the demo summary printed ...
    shown = _metric(page, "rmse")
    assert shown == pytest.approx(recorded, rel=1e-6)
    printed = re.search(r"^compress: .* reconstruction RMSE ([0-9.e+-]+),", r.stdout, re.M)
    summary = re.search(r"^demo summary: .*\(RMSE ([0-9.e+-]+),", r.stdout, re.M)
    assert printed and summary, r.stdout
    assert (f"{shown:.6g}", f"{shown:.4g}") == (printed.group(1), summary.group(1))
    assert f"RMSE <strong>{shown:.6g}</strong> in zscore-standardized units" in page
    # ... which is NumPy's error of the rank-5 PCA of the z-scores (not of the raw cube)
    assert shown == pytest.approx(ref["rmse"], rel=1e-4)
    assert ref["wrong"] > 5 * ref["rmse"]  # what the old report compared is far off
    assert _metric(page, "rmse_raw") == pytest.approx(ref["rmse_raw"], rel=1e-4)
    assert _metric(page, "n_values") == ref["n_values"]
    assert "the zscore-standardized cube the model was fitted on" in page
    assert "RMSE (zscore-standardized units)" in page
    assert "RMSE (standardized units of the input compress read)" in page


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """raw -> stats -> standardize -> compress (and compress --standardize) -> reconstruct,
    on a cube smaller than the demo's, through the CLI."""
    from ..conftest import run_cli  # noqa: PLC0415

    d = tmp_path_factory.mktemp("rmse")
    raw = write_cube(make_cube((9, 60, 70), seed=5, chunks={"y": 32, "x": 32}), d / "raw.zarr")
    p = {k: d / f"{k}.zarr" for k in ("z", "pca", "rec", "pcas")}
    steps = [
        ("stats", str(raw)),
        ("standardize", str(raw), "-o", str(p["z"])),
        ("compress", str(p["z"]), "-o", str(p["pca"]), "-k", "3"),
        ("reconstruct", str(p["pca"]), "-o", str(p["rec"])),
        ("compress", str(raw), "-o", str(p["pcas"]), "-k", "3", "--standardize"),
    ]
    for step in steps:
        r = run_cli("-q", *step)
        assert r.returncode == 0, (step, r.stderr)
    return {"raw": raw, **p}


def _report(cli: Any, store: Path, original: Path, out: Path) -> str:
    args = ("--original", str(original), "--max-bands", "2", "--size", "32")
    r = cli("-q", "report", str(store), "-o", str(out), *args)
    assert r.returncode == 0, r.stderr
    return out.read_text()


def test_raw_and_standardized_originals_give_the_same_error(
    cli, chain: dict[str, Path], tmp_path: Path
) -> None:
    ref = _numpy_pca(xr.open_zarr(chain["raw"])["cube"].values, 3)
    recorded = _recorded_rmse(chain["pca"])
    for store in ("pca", "rec"):  # the scores, and their reconstruct output
        for original in ("raw", "z"):
            page = _report(
                cli, chain[store], chain[original], tmp_path / f"{store}-{original}.html"
            )
            assert _metric(page, "rmse") == pytest.approx(recorded, rel=1e-5), (store, original)
            assert _metric(page, "rmse") == pytest.approx(ref["rmse"], rel=1e-4)
            assert _metric(page, "rmse_raw") == pytest.approx(ref["rmse_raw"], rel=1e-4)
            assert "zscore-standardized units" in page


def test_compress_standardize_flag_is_in_data_units(
    cli, chain: dict[str, Path], tmp_path: Path
) -> None:
    # --standardize inside compress: the model standardizes and un-standardizes itself,
    # so the error is in the input's (raw) units; there is no second figure
    ref = _numpy_pca(xr.open_zarr(chain["raw"])["cube"].values, 3)
    page = _report(cli, chain["pcas"], chain["raw"], tmp_path / "s.html")
    assert _metric(page, "rmse") == pytest.approx(_recorded_rmse(chain["pcas"]), rel=1e-5)
    assert _metric(page, "rmse") == pytest.approx(ref["rmse_raw"], rel=1e-4)
    assert "RMSE (data units)" in page and 'data-metric="rmse_raw"' not in page
    # given the standardized store instead, it is destandardized with its statistics
    page = _report(cli, chain["pcas"], chain["z"], tmp_path / "sz.html")
    assert _metric(page, "rmse") == pytest.approx(ref["rmse_raw"], rel=1e-4)
    assert "destandardized with its saved zscore statistics" in page


def test_raw_original_without_the_standardized_store_is_one_line_exit_2(
    cli, chain: dict[str, Path], tmp_path: Path
) -> None:
    # the model was fitted on z-scores; with the standardized store gone, the raw cube
    # cannot be put in the model's units: refused, not compared in the wrong units
    pca = tmp_path / "pca.zarr"
    shutil.copytree(chain["pca"], pca)
    z = chain["z"]
    moved = z.with_name("z-moved.zarr")
    z.rename(moved)
    try:
        r = cli(
            "-q",
            "report",
            str(pca),
            "-o",
            str(tmp_path / "r.html"),
            "--original",
            str(chain["raw"]),
        )
    finally:
        moved.rename(z)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "fitted on standardized data" in line and str(z) in line and "--original" in line
    assert not (tmp_path / "r.html").exists()
