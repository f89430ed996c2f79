"""`cubepipe stats / standardize / destandardize` end to end through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from cubepipe.storage import describe, open_cube, write_cube


def test_stats_saves_prints_and_feeds_standardize(cli, small_store: Path, tmp_path: Path) -> None:
    proc = cli("stats", str(small_store), "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert len(d["bands"]) == 15 and d["ddof"] == 0
    cube = xr.open_zarr(small_store)["cube"]  # read by xarray/zarr, not cubepipe
    ref = cube.values.astype(np.float64)
    expected = _numpy_stats(ref)
    for k, want in expected.items():
        tol = 1e-10 if k == "std" else 1e-12  # the std of a two-pass float64 reference
        np.testing.assert_allclose([b[k] for b in d["bands"]], want, rtol=tol, atol=0, err_msg=k)
    np.testing.assert_array_equal([b["band"] for b in d["bands"]], cube["band"].values)
    np.testing.assert_array_equal([b["wavelength"] for b in d["bands"]], cube["wavelength"])
    info = describe(small_store)
    assert {"stats_mean", "stats_std", "stats_count"} <= set(info["fitted"])
    assert [h["op"] for h in info["history"]][-1] == "stats"
    assert info["complete"] is True

    table = cli("stats", str(small_store), "--no-save")
    assert table.returncode == 0, table.stderr
    head, *rows = table.stdout.strip().splitlines()
    assert head.split() == ["band", "nm", "count", "mean", "std", "min", "max"]
    printed = np.array([[float(c) for c in row.split()] for row in rows])
    assert printed.shape == (15, 7)
    np.testing.assert_array_equal(printed[:, 0], cube["band"].values)
    np.testing.assert_allclose(printed[:, 1], cube["wavelength"].values, atol=0.005)
    np.testing.assert_array_equal(printed[:, 2], expected["count"])
    for col, k in enumerate(("mean", "std", "min", "max"), start=3):  # printed to 6 digits
        np.testing.assert_allclose(printed[:, col], expected[k], rtol=5e-6, atol=0, err_msg=k)

    z = tmp_path / "z.zarr"
    proc = cli("standardize", str(small_store), "-o", str(z))
    assert proc.returncode == 0, proc.stderr
    assert "using the statistics saved in" in proc.stderr
    v = open_cube(z)["cube"].values.astype(np.float64)
    zscores = (ref - expected["mean"][:, None, None]) / expected["std"][:, None, None]
    np.testing.assert_allclose(v, zscores, rtol=1e-6, atol=1e-6)  # float32 output, NaN kept
    np.testing.assert_allclose(np.nanmean(v, axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(np.nanstd(v, axis=(1, 2)), 1, atol=1e-5)

    # Statistics from a JSON file, applied to a different store.
    stats_json = tmp_path / "stats.json"
    stats_json.write_text(json.dumps(d))
    z2 = tmp_path / "z2.zarr"
    assert (
        cli("standardize", str(small_store), "-o", str(z2), "--stats", str(stats_json)).returncode
        == 0
    )
    np.testing.assert_array_equal(open_cube(z2)["cube"].values, open_cube(z)["cube"].values)

    back = tmp_path / "back.zarr"
    assert cli("destandardize", str(z), "-o", str(back)).returncode == 0
    np.testing.assert_allclose(
        open_cube(back)["cube"].values, ref.astype(np.float32), rtol=1e-5, atol=1e-5
    )
    # Re-fitting a standardized store would destroy what destandardize needs: refused.
    proc = cli("stats", str(z))
    assert proc.returncode == 2 and "--no-save" in proc.stderr


def _numpy_stats(a: np.ndarray) -> dict[str, np.ndarray]:
    """Per-band statistics of float64 data by NumPy (two-pass, NaN left out, ddof 0)."""
    return {
        "count": np.sum(~np.isnan(a), axis=(1, 2)),
        "mean": np.nanmean(a, axis=(1, 2)),
        "std": np.nanstd(a, axis=(1, 2)),
        "min": np.nanmin(a, axis=(1, 2)),
        "max": np.nanmax(a, axis=(1, 2)),
    }


def test_standardize_errors_are_one_line_exit_2(cli, tmp_path: Path) -> None:
    a = np.ones((2, 4, 4), np.float32)
    a[1] = np.nan
    path = write_cube(
        xr.Dataset({"cube": (("band", "y", "x"), da.from_array(a))}), tmp_path / "bad.zarr"
    )
    proc = cli("standardize", str(path), "-o", str(tmp_path / "o.zarr"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower() or "Traceback" in line]
    assert errors == lines[-1:], proc.stderr  # one line, the last, no traceback
    assert lines[-1].startswith("cubepipe: error: band 1 has no valid values"), proc.stderr
    assert not (tmp_path / "o.zarr").exists()
    proc = cli("destandardize", str(path), "-o", str(tmp_path / "o.zarr"))
    assert proc.returncode == 2 and "not standardized" in proc.stderr
    proc = cli("standardize", str(path), "-o", str(tmp_path / "o.zarr"), "--stats", str(path))
    assert proc.returncode == 2 and "cubepipe stats" in proc.stderr
