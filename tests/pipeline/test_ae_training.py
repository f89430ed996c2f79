"""Autoencoder training (issue 18): the kept model is never worse than its PCA start on
the held-out pixels (checked against a NumPy float64 PCA of our own on the same pixels),
early stopping counts from the best *trained* epoch, the learning rate falls on plateaus,
the stopping reason is stated (report, store history, CLI), training is deterministic for
a seed, and hostile inputs (constant band, NaN pixels, too few pixels, a diverging
learning rate) give a clear error or a correct model."""

from __future__ import annotations

import math
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from cubepipe.pipeline.compression.api import prepare_compress
from cubepipe.pipeline.compression.autoencoder.fit import (
    ae_project,
    ae_reconstruct,
    fit_autoencoder,
)
from cubepipe.pipeline.compression.autoencoder.sample import pixel_keys
from cubepipe.pipeline.compression.autoencoder.schedule import Schedule
from cubepipe.storage import CubepipeWarning, InputError, history, read_attrs, write_cube

torch = pytest.importorskip("torch")

from .test_autoencoder import bilinear_spectra  # noqa: E402

SMALL = {"hidden": (16, 8), "batch_size": 64}


def curved_cube(nb: int = 10, ny: int = 30, nx: int = 32, *, seed: int = 0) -> xr.Dataset:
    """Bilinear mixtures of 3 smooth spectra (a curved 2-D manifold) plus a little noise,
    with a few NaN pixels: the AE has something to gain over a K = 2 PCA."""
    cube = bilinear_spectra(nb, ny, nx, seed=seed, noise=0.002)
    cube[2, 5, 7] = np.nan
    cube[:, 20:22, 3:6] = np.nan
    return _ds(cube)


def linear_cube(nb: int = 10, ny: int = 30, nx: int = 32, *, seed: int = 1) -> xr.Dataset:
    """Linear mixtures of 2 spectra plus Gaussian noise: PCA is the best K = 3 code."""
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(2, nb))
    x = rng.normal(size=(ny * nx, 2)) @ e + 0.05 * rng.normal(size=(ny * nx, nb))
    return _ds(x.T.reshape(nb, ny, nx).astype(np.float32))


def _ds(cube: np.ndarray) -> xr.Dataset:
    nb, ny, nx = cube.shape
    return xr.Dataset({"cube": (("band", "y", "x"), da.from_array(cube, chunks=(nb, 16, 16)))})


def heldout_pixels(ds: xr.Dataset, report: dict, seed: int) -> np.ndarray:
    """Flat (y, x) positions of the held-out pixels when the sample is every valid pixel:
    the ``heldout_pixels`` valid pixels with the smallest keys (the sample's order)."""
    x = ds["cube"].values
    valid = np.flatnonzero(~np.isnan(x).any(0).reshape(-1))
    assert report["train_pixels"] + report["heldout_pixels"] == valid.size  # sample = all
    return valid[np.argsort(pixel_keys(valid, seed), kind="stable")[: report["heldout_pixels"]]]


def pca_heldout_mse(ds: xr.Dataset, k: int, rows: np.ndarray) -> float:
    """Mean squared error (data units, float64) on pixels ``rows`` of the K-component PCA
    of every valid pixel: NumPy alone, nothing of cubepipe."""
    x = ds["cube"].values.astype(np.float64)
    pix = x.reshape(x.shape[0], -1).T
    fit = pix[~np.isnan(pix).any(1)]
    mu = fit.mean(0)
    _, vecs = np.linalg.eigh(np.cov(fit, rowvar=False))
    v = vecs[:, ::-1][:, :k]
    held = pix[rows]
    rec = mu + (held - mu) @ v @ v.T
    return float(np.mean((rec - held) ** 2))


def ae_heldout_mse(ds: xr.Dataset, model: xr.Dataset, rows: np.ndarray) -> float:
    scores, _ = ae_project(ds, model)
    rec = ae_reconstruct(scores, model).values.astype(np.float64)
    x = ds["cube"].values.astype(np.float64)
    nb = x.shape[0]
    return float(np.mean((rec.reshape(nb, -1)[:, rows] - x.reshape(nb, -1)[:, rows]) ** 2))


# -- the schedule alone (no PyTorch) -----------------------------------------------------


def test_a_first_epoch_worse_than_the_start_does_not_stop_a_falling_loss() -> None:
    # The demo-cube failure: epochs 1-5 above the start but falling; the old rule (count
    # from the start, patience 5) stopped at epoch 5 and kept the start.
    plan = Schedule(epochs=50, patience=5, learning_rate=1e-3, start_loss=1.0)
    losses = [1.05, 1.04, 1.03, 1.02, 1.01, 0.99, 0.98, 0.97] + [0.97] * 5
    stops = [plan.end_epoch(e, v)[1] for e, v in enumerate(losses, 1)]
    assert stops == [False] * 12 + [True]
    out = plan.report()
    assert out["stop_reason"] == "patience" and out["best_epoch"] == 8 and out["beat_start"]
    assert out["stopped"] == "no held-out gain over 0.01% for 5 epochs (best epoch 8)"
    assert out["epochs_run"] == 13 and len(out["heldout_history"]) == 13


def test_plateau_halves_the_rate_and_a_start_never_beaten_is_kept() -> None:
    plan = Schedule(epochs=50, patience=6, learning_rate=1e-3, start_loss=1.0)
    rates = []
    for epoch, loss in enumerate([1.2, 1.1] + [1.1] * 6, 1):
        best, stop = plan.end_epoch(epoch, loss)
        assert not best
        rates.append(plan.learning_rate_now)
    assert stop and rates == [1e-3] * 3 + [5e-4] * 2 + [2.5e-4] * 2 + [1.25e-4]
    out = plan.report()
    assert out["best_epoch"] == 0 and not out["beat_start"]
    assert out["stopped"].endswith(
        "no epoch beat the PCA start on held-out pixels, so the stored model is the PCA start"
    )
    assert "reduce-on-plateau" in out["lr_schedule"] and out["learning_rate_final"] == 1.25e-4


def test_cap_divergence_and_no_training_are_stated() -> None:
    plan = Schedule(epochs=3, patience=5, learning_rate=1e-3, start_loss=1.0)
    assert [plan.end_epoch(e, v)[1] for e, v in ((1, 0.9), (2, 0.8), (3, 0.7))] == [0, 0, 1]
    assert plan.report()["stop_reason"] == "epoch_cap"
    assert plan.sentence() == (
        "epoch cap 3 reached while still improving (best epoch 3) - raise --epochs"
    )
    plan = Schedule(epochs=3, patience=5, learning_rate=1e-3, start_loss=1.0)
    assert [plan.end_epoch(e, v)[1] for e, v in ((1, 0.9), (2, 0.95), (3, 0.96))] == [0, 0, 1]
    assert "before --patience 5 ran out (last gain over 0.01% at epoch 1" in plan.sentence()
    plan = Schedule(epochs=9, patience=5, learning_rate=1e-3, start_loss=-3.0)  # VAE: < 0
    assert plan.end_epoch(1, -3.5) == (True, False)
    assert plan.end_epoch(2, math.nan) == (False, True)
    assert plan.report()["stop_reason"] == "diverged" and plan.best_epoch == 1
    assert "lower --learning-rate" in plan.sentence()
    plan = Schedule(epochs=0, patience=5, learning_rate=1e-3, start_loss=1.0)
    assert plan.report()["stop_reason"] == "not_trained"
    assert plan.sentence() == "not trained (--epochs 0): the stored model is the PCA start"


# -- training ------------------------------------------------------------------------------


def test_kept_model_beats_pca_on_heldout_pixels_and_says_why_it_stopped() -> None:
    ds = curved_cube()
    model, _, report = fit_autoencoder(ds, n_components=2, epochs=40, seed=3, **SMALL)
    rows = heldout_pixels(ds, report, seed=3)
    pca = pca_heldout_mse(ds, 2, rows)
    ae = ae_heldout_mse(ds, model, rows)
    assert report["beat_start"] and report["best_epoch"] > 0
    assert ae < 0.9 * pca, (ae, pca)
    # The report's held-out loss (PyTorch, weighted z-scores) is the same error.
    scale2 = np.mean(model["ae_scale"].values ** 2)
    assert report["heldout_mse"] * scale2 == pytest.approx(ae, rel=1e-3)
    assert report["heldout_mse_initial"] * scale2 == pytest.approx(pca, rel=1e-3)
    assert report["stop_reason"] in ("patience", "epoch_cap")
    assert f"best epoch {report['best_epoch']}" in report["stopped"]
    assert len(report["heldout_history"]) == report["epochs_run"]


def test_when_pca_is_best_the_stored_model_is_the_pca_start() -> None:
    # Linear data and a rate that wrecks the network: no epoch beats the start.
    ds = linear_cube()
    model, _, report = fit_autoencoder(
        ds, n_components=3, epochs=30, patience=3, learning_rate=0.5, seed=0, **SMALL
    )
    assert not report["beat_start"] and report["best_epoch"] == 0
    assert report["heldout_mse"] == report["heldout_mse_initial"]
    assert report["stopped"].endswith("so the stored model is the PCA start")
    assert report["stop_reason"] in ("patience", "epoch_cap", "diverged")
    rows = heldout_pixels(ds, report, seed=0)
    assert ae_heldout_mse(ds, model, rows) == pytest.approx(pca_heldout_mse(ds, 3, rows), rel=1e-5)


def test_epoch_cap_while_improving_is_reported() -> None:
    ds = curved_cube()
    _, _, report = fit_autoencoder(ds, n_components=2, epochs=3, seed=3, **SMALL)
    assert report["stop_reason"] == "epoch_cap" and report["epochs_run"] == 3
    assert report["stopped"].startswith("epoch cap 3 reached")
    assert "raise --epochs" in report["stopped"]


def test_same_seed_same_training() -> None:
    ds = curved_cube(8, 20, 24)
    runs = [
        fit_autoencoder(ds, n_components=2, epochs=12, patience=3, seed=s, **SMALL)
        for s in (4, 4, 5)
    ]
    (ma, _, ra), (mb, _, rb), (mc, _, rc) = runs
    for v in ma.data_vars:
        np.testing.assert_array_equal(ma[v].values, mb[v].values)
    drop = ("train_seconds",)
    assert {k: v for k, v in ra.items() if k not in drop} == {
        k: v for k, v in rb.items() if k not in drop
    }
    assert ra["heldout_history"] != rc["heldout_history"]


def test_constant_band_and_nan_pixels() -> None:
    ds = curved_cube()
    cube = ds["cube"].values.copy()
    cube[4] = np.where(np.isnan(cube[4]), np.nan, 0.25)  # a flat band
    ds = _ds(cube)
    with pytest.warns(CubepipeWarning, match="zero"):
        model, _, report = fit_autoencoder(ds, n_components=2, epochs=8, seed=1, **SMALL)
    rows = heldout_pixels(ds, report, seed=1)
    ae = ae_heldout_mse(ds, model, rows)
    assert np.isfinite(ae) and ae <= pca_heldout_mse(ds, 2, rows) * (1 + 1e-5)
    rec = ae_reconstruct(ae_project(ds, model)[0], model).values
    ok = ~np.isnan(cube).any(0)
    assert np.isnan(rec[:, ~ok]).all() and np.isfinite(rec[:, ok]).all()
    np.testing.assert_allclose(rec[4, ok], 0.25, atol=1e-4)  # the flat band stays flat


def test_too_few_pixels_to_hold_out_is_a_clear_error() -> None:
    ds = curved_cube(6, 10, 10)  # 100 pixels, one of them NaN: 99 valid
    with pytest.raises(InputError, match=r"at least 100 pixels .* held out .* has 99"):
        fit_autoencoder(ds, n_components=2, epochs=1)
    with pytest.raises(InputError, match="--train-pixels must be at least 100"):
        fit_autoencoder(curved_cube(), n_components=2, train_pixels=50)
    full = _ds(np.nan_to_num(ds["cube"].values, nan=0.5))  # 100 valid: 10 held out
    _, _, report = fit_autoencoder(full, n_components=2, epochs=1, **SMALL)
    assert report["heldout_pixels"] == 10 and report["train_pixels"] == 90


# -- the store and the command line ----------------------------------------------------------


def test_stopping_reason_in_the_store_history_and_printed(tmp_path: Path, cli) -> None:
    ds = curved_cube()
    job = prepare_compress(ds, components=2, method="ae", epochs=3, **SMALL)
    out = job.write(tmp_path / "c.zarr")
    training = history(read_attrs(out))[-1]["results"]["training"]
    assert training["stop_reason"] == "epoch_cap" and "raise --epochs" in training["stopped"]
    src = write_cube(ds, tmp_path / "in.zarr")
    res = cli(
        "compress", str(src), "-o", str(tmp_path / "cli.zarr"), "-k", "2", "--method", "ae",
        "--hidden", "16,8", "--batch-size", "64", "--epochs", "3",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "compress: ae training stopped: epoch cap 3 reached while" in res.stdout
    assert "held-out MSE" in res.stderr and "at the PCA start" in res.stderr
