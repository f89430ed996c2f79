"""`cubepipe compress / reconstruct` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cubepipe.storage import history, open_cube, read_attrs


def test_compress_reconstruct_and_reuse_a_model(cli, small_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    proc = cli("compress", str(small_store), "-o", str(out), "--components", "5")
    assert proc.returncode == 0, proc.stderr
    assert "RMSE" in proc.stdout and "PSNR" in proc.stdout and "spectral angle" in proc.stdout
    c = open_cube(out)
    assert c["scores"].dims == ("component", "y", "x") and c["scores"].dtype == np.float32
    assert c["scores"].shape == (5, 200, 240)
    for v in ("pca_components", "pca_mean", "pca_explained_variance", "stats_mean"):
        assert c[v].dtype == np.float64
    res = history(read_attrs(out))[-1]["results"]
    assert res["rmse"] > 0 and res["psnr_db"] > 20

    rec = tmp_path / "r.zarr"
    assert cli("reconstruct", str(out), "-o", str(rec)).returncode == 0
    x = open_cube(small_store)["cube"].values
    xr_ = open_cube(rec)["cube"].values
    ok = ~np.isnan(x).any(0)
    rmse = float(np.sqrt(np.mean((xr_[:, ok].astype(np.float64) - x[:, ok]) ** 2)))
    assert rmse == np.float64(res["rmse"]).item() or abs(rmse / res["rmse"] - 1) < 1e-5
    assert np.isnan(xr_[:, ~ok]).all()

    again = tmp_path / "again.zarr"
    proc = cli("compress", str(small_store), "-o", str(again), "--model", str(out))
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(open_cube(again)["scores"].values, c["scores"].values)

    info = json.loads(cli("info", str(out), "--json").stdout)
    assert "pca_components" in info["fitted"]


def test_variance_option_and_errors(cli, small_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "v.zarr"
    assert cli("compress", str(small_store), "-o", str(out), "--variance", "0.99").returncode == 0
    assert open_cube(out).sizes["component"] >= 1
    for args, needle in (
        ((), "exactly one"),
        (("-k", "2", "--variance", "0.5"), "exactly one"),
        (("-k", "99"), "between 1 and 15"),
        (("-k", "2", "--method", "ae", "--variance", "0.5"), "--variance chooses K for PCA only"),
        (("-k", "2", "--model", str(small_store)), "no fitted PCA model"),
    ):
        proc = cli("compress", str(small_store), "-o", str(tmp_path / "x.zarr"), *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "x.zarr").exists()
    proc = cli("reconstruct", str(small_store), "-o", str(tmp_path / "y.zarr"))
    assert proc.returncode == 2 and "no 'scores'" in proc.stderr


def test_sample_fits_on_part_of_the_chunks(cli, small_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    proc = cli(
        "compress", str(small_store), "-o", str(out), "-k", "3", "--sample", "0.5", "--seed", "7"
    )
    assert proc.returncode == 0, proc.stderr
    assert "fitted on 6 chunks (0.5 of them, seed 7)" in proc.stderr
    c = open_cube(out)
    assert c["pca_components"].attrs["sample_chunks"] == 6  # of 4 x 3 chunks
    assert "stats_mean" not in c  # a sample's statistics are not saved as the input's
    entry = history(read_attrs(out))[-1]
    assert entry["params"]["sample"] == 0.5 and entry["params"]["seed"] == 7
    assert entry["results"]["rmse"] > 0  # the error is measured on every pixel
    proc = cli(
        "compress", str(small_store), "-o", str(tmp_path / "x.zarr"), "-k", "3", "--sample", "0"
    )
    assert proc.returncode == 2 and "--sample" in proc.stderr
