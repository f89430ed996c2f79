"""Spectral autoencoders: the pixel sample, the NumPy forward pass against PyTorch's, the
PCA start, determinism, the store round trip, invalid pixels, and AE beating PCA on a
nonlinear cube. Tiny models and few epochs: the full comparison lives in
benchmarks/bench_ae.py."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from cubepipe.pipeline.backend import resolve_device, to_device
from cubepipe.pipeline.compression.autoencoder.fit import (
    ae_project,
    ae_reconstruct,
    fit_autoencoder,
    model_kind,
    summarize_ae_metrics,
    take_ae_model,
)
from cubepipe.pipeline.compression.autoencoder.net import (
    build_spec,
    decode_rows,
    encode_rows,
    init_params,
)
from cubepipe.pipeline.compression.autoencoder.sample import pixel_keys, sample_pixels
from cubepipe.pipeline.compression.pca import fit_pca, pca_encode, summarize_metrics
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import InputError, open_cube, write_cube

from ..conftest import cube_chunk_reads

torch = pytest.importorskip("torch")

TINY = {"hidden": (16, 8), "epochs": 3, "batch_size": 256}


def bilinear_spectra(nb: int, ny: int, nx: int, *, seed: int, noise: float) -> np.ndarray:
    """``(nb, ny, nx)`` float32: bilinear mixtures (Fan et al. 2009) of 3 smooth
    endmember spectra with Dirichlet abundances, plus Gaussian noise of std ``noise``."""
    rng = np.random.default_rng(seed)
    wl = np.linspace(0, 1, nb)
    e = np.stack([0.15 + 0.7 * np.exp(-0.5 * ((wl - c) / 0.25) ** 2) for c in (0.1, 0.5, 0.9)])
    a = rng.dirichlet(np.full(3, 0.7), size=ny * nx)
    x = a @ e
    for i in range(3):
        for j in range(i + 1, 3):
            x += (a[:, i] * a[:, j])[:, None] * 2 * (e[i] * e[j])[None]
    x += noise * rng.normal(size=x.shape)
    return x.T.reshape(nb, ny, nx).astype(np.float32)


def nonlinear_cube(
    shape: tuple[int, int, int] = (12, 48, 50), *, seed: int = 0, chunks: int = 24
) -> xr.Dataset:
    """Bilinearly mixed (Fan et al. 2009) reflectance spectra of 3 endmembers: two
    abundance degrees of freedom on a curved manifold, plus a little noise."""
    nb, ny, nx = shape
    cube = bilinear_spectra(nb, ny, nx, seed=seed, noise=0.001)
    return xr.Dataset(
        {"cube": (("band", "y", "x"), da.from_array(cube, chunks=(nb, chunks, chunks)))}
    )


def _with_invalid(ds: xr.Dataset) -> xr.Dataset:
    cube = ds["cube"].values.copy()
    cube[3, 20, 21] = np.nan  # one band missing: the whole pixel is invalid
    mask = np.ones(cube.shape[1:], bool)
    mask[:8, :9] = False
    return xr.Dataset(
        {
            "cube": (("band", "y", "x"), da.from_array(cube, chunks=(cube.shape[0], 16, 16))),
            "mask": (("y", "x"), mask),
        }
    )


def test_sample_is_uniform_valid_and_independent_of_chunking() -> None:
    ds = _with_invalid(nonlinear_cube((4, 40, 50)))
    x = ds["cube"].values
    valid = ~np.isnan(x).any(0) & ds["mask"].values
    keys_ref = pixel_keys(np.flatnonzero(valid), 7)
    expect = np.flatnonzero(valid)[np.argsort(keys_ref)[:300]]
    for chunks in ((4, 16, 16), (4, 40, 7), (4, 40, 50)):
        data = ds["cube"].data.rechunk(chunks)
        v = da.from_array(np.broadcast_to(ds["mask"].values, x.shape), chunks=chunks)
        keys, index, values = sample_pixels(data, v, band_axis=0, n=300, seed=7).compute()
        np.testing.assert_array_equal(index, expect)  # the 300 smallest keys, in key order
        assert np.all(np.diff(keys) > 0)
        np.testing.assert_array_equal(values, x.reshape(4, -1)[:, index].T)
    _, other, _ = sample_pixels(data, v, band_axis=0, n=300, seed=8).compute()
    assert len(set(other) & set(expect)) < 150
    _, everything, _ = sample_pixels(data, v, band_axis=0, n=10**6, seed=7).compute()
    assert everything.size == valid.sum()
    u = pixel_keys(np.arange(100_000), 1)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


@pytest.mark.parametrize("kind", ["ae", "vae"])
@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_numpy_forward_pass_matches_pytorch(kind: str, architecture: str) -> None:
    from cubepipe.pipeline.compression.autoencoder.torch_backend import _Runner  # noqa: PLC0415

    spec = build_spec(kind=kind, architecture=architecture, bands=11, components=3, hidden=(12, 6))
    params = init_params(spec, seed=1)
    z = np.random.default_rng(2).normal(size=(11, 300)).astype(np.float32)
    mu, kl = encode_rows(np, z, params, spec)
    zhat = decode_rows(np, mu, params, spec)
    net = _Runner(torch, spec, {k: torch.from_numpy(v) for k, v in params.items()})
    with torch.no_grad():
        tmu, tlv = net.encode(torch.from_numpy(z.T.copy()))
        tz = net.decode(tmu)
    assert mu.dtype == zhat.dtype == np.float32
    np.testing.assert_allclose(mu, tmu.numpy().T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(zhat, tz.numpy().T, rtol=1e-5, atol=1e-5)
    if kind == "vae":
        tkl = 0.5 * (tmu**2 + tlv.exp() - 1 - tlv).sum(1)
        np.testing.assert_allclose(kl, tkl.numpy(), rtol=1e-4)
    else:
        assert kl is None


@pytest.mark.parametrize("standardize", [False, True])
def test_before_training_the_network_is_pca(standardize: bool) -> None:
    ds = make_cube((10, 40, 48), seed=3, chunks={"y": 20, "x": 24})
    model, stats, report = fit_autoencoder(
        ds, n_components=3, standardize=standardize, **{**TINY, "epochs": 0}
    )
    assert report["epochs_run"] == 0 and report["best_epoch"] == 0
    scores, partials = ae_project(ds, model)
    ours = summarize_ae_metrics(partials.compute())
    pca, _ = fit_pca(ds, n_components=3, standardize=standardize)
    theirs = summarize_metrics(pca_encode(ds, pca)[1].compute())
    assert ours["rmse"] == pytest.approx(theirs["rmse"], rel=1e-4)
    assert ours["n_values"] == theirs["n_values"]
    s = scores.values.reshape(3, -1)
    s = s[:, ~np.isnan(s).any(0)]
    np.testing.assert_allclose(np.cov(s), np.eye(3), atol=0.02)  # whitened PCA scores
    assert set(stats.data_vars) >= {"stats_mean", "stats_std", "stats_count"}
    np.testing.assert_allclose(model["ae_mean"].values, stats["stats_mean"].values)


def test_ae_beats_pca_on_a_nonlinear_cube() -> None:
    ds = nonlinear_cube()
    pca, _ = fit_pca(ds, n_components=2)
    pca_rmse = summarize_metrics(pca_encode(ds, pca)[1].compute())["rmse"]
    model, _, report = fit_autoencoder(
        ds, n_components=2, hidden=(32, 16), epochs=12, batch_size=128, learning_rate=3e-3
    )
    ae_rmse = summarize_ae_metrics(ae_project(ds, model)[1].compute())["rmse"]
    assert report["heldout_mse"] < report["heldout_mse_initial"]
    assert ae_rmse < 0.5 * pca_rmse, (ae_rmse, pca_rmse)  # ~0.07 here; 2 dof, curved


def test_same_seed_same_scores_other_seed_other_model() -> None:
    ds = nonlinear_cube((8, 30, 32))
    runs = [fit_autoencoder(ds, n_components=2, seed=s, **TINY)[0] for s in (5, 5, 6)]
    a, b, c = (ae_project(ds, m)[0].values for m in runs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    va = fit_autoencoder(ds, n_components=2, kind="vae", seed=5, **TINY)[0]
    vb = fit_autoencoder(ds, n_components=2, kind="vae", seed=5, **TINY)[0]
    np.testing.assert_array_equal(ae_project(ds, va)[0].values, ae_project(ds, vb)[0].values)


@pytest.mark.parametrize(
    ("kind", "architecture"), [("ae", "mlp"), ("vae", "conv")], ids=["ae-mlp", "vae-conv"]
)
def test_model_round_trips_through_a_store(tmp_path: Path, kind: str, architecture: str) -> None:
    ds = nonlinear_cube((9, 24, 26), chunks=12)
    model, _, report = fit_autoencoder(
        ds, n_components=3, kind=kind, architecture=architecture, **TINY
    )
    scores, partials = ae_project(ds, model)
    out = xr.Dataset({"scores": scores}).assign(model)
    path = write_cube(out, tmp_path / "m.zarr", chunks={"component": 3})
    stored = open_cube(path)
    assert model_kind(stored) == kind
    loaded = take_ae_model(stored)
    assert all(loaded[v].dtype == np.float64 for v in loaded.data_vars)
    spec = loaded[f"{kind}_mean"].attrs["cubepipe_model"]
    assert spec["kind"] == kind and spec["architecture"] == architecture
    assert loaded[f"{kind}_enc_skip_weight"].dims == ("component", "band")
    again, partials2 = ae_project(ds, loaded)
    np.testing.assert_array_equal(again.values, scores.values)
    np.testing.assert_array_equal(stored["scores"].values, scores.values)
    m1 = summarize_ae_metrics(partials.compute(), kind=kind)
    assert m1 == summarize_ae_metrics(partials2.compute(), kind=kind)
    if kind == "vae":
        assert m1["kl_nats"] > 0 and report["heldout_kl"] > 0
    rec = ae_reconstruct(stored["scores"], loaded).values
    x = ds["cube"].values.astype(np.float64)
    assert rec.dtype == np.float32 and rec.shape == x.shape
    assert np.sqrt(np.mean((rec - x) ** 2)) == pytest.approx(m1["rmse"], rel=1e-5)


def test_invalid_pixels_are_left_out_and_stay_invalid() -> None:
    ds = _with_invalid(nonlinear_cube((6, 40, 44)))
    model, stats, report = fit_autoencoder(ds, n_components=2, **TINY)
    valid = 40 * 44 - 72 - 1
    spec = model["ae_mean"].attrs["cubepipe_model"]
    assert spec["n_samples"] == valid == report["train_pixels"] + report["heldout_pixels"]
    assert int(stats["stats_count"].values[3]) == valid
    scores, partials = ae_project(ds, model)
    s = scores.values
    assert scores.dtype == np.float32 and scores.dims == ("component", "y", "x")
    assert np.isnan(s[:, 20, 21]).all() and np.isnan(s[:, :8, :9]).all()
    assert np.isfinite(s[:, 10:, 10:][:, ~np.isnan(s[:, 10:, 10:]).any(0)]).all()
    assert np.isnan(s).any(0).sum() == 73
    assert summarize_ae_metrics(partials.compute())["n_values"] == valid * 6
    rec = ae_reconstruct(scores, model).values
    assert np.isnan(rec[:, :8, :9]).all() and np.isnan(rec[:, 20, 21]).all()
    assert np.isfinite(rec[:, 30:, 30:]).all()


def test_fit_reads_once_encode_once_and_graph_building_computes_nothing(
    tmp_path: Path, no_compute, counting_open
) -> None:
    path = write_cube(nonlinear_cube((8, 40, 48)), tmp_path / "in.zarr", chunks={"y": 20, "x": 24})
    ds, reads = counting_open(path)
    reads.clear()
    model, _, _ = fit_autoencoder(ds, n_components=2, **TINY)
    got = cube_chunk_reads(reads)
    assert len(got) == 4 and set(got.values()) == {1}
    reads.clear()
    with no_compute:
        scores, partials = ae_project(ds, model)
        rec = ae_reconstruct(scores, model)
    names = {k[0] if isinstance(k, tuple) else k for k in partials.__dask_graph__()}
    assert any(n.startswith("cubepipe-compress-encode") for n in names)
    assert any(n.startswith("cubepipe-compress-metrics") for n in names)
    assert rec.data.name.startswith("cubepipe-reconstruct")
    dask.compute(scores.data, partials)
    assert set(cube_chunk_reads(reads).values()) == {1}  # scores and metrics: one read


def test_errors_are_one_line_input_errors() -> None:
    ds = nonlinear_cube((5, 10, 12))
    with pytest.raises(InputError, match="between 1 and 5"):
        fit_autoencoder(ds, n_components=6)
    with pytest.raises(InputError, match="--architecture must be one of mlp, conv"):
        fit_autoencoder(ds, n_components=2, architecture="rnn")
    few = ds.copy()
    few["mask"] = (("y", "x"), np.zeros((10, 12), bool))
    with pytest.raises(InputError, match="at least 100 pixels"):
        fit_autoencoder(few, n_components=2)
    model, _, _ = fit_autoencoder(ds, n_components=2, **TINY)
    with pytest.raises(InputError, match="5 bands but 'cube' has 4"):
        ae_project(ds.isel(band=slice(0, 4)), model)
    with pytest.raises(InputError, match="no fitted autoencoder"):
        take_ae_model(ds)


@pytest.mark.gpu
def test_gpu_encoding_matches_the_cpu() -> None:
    ds = nonlinear_cube((12, 64, 80), chunks=32)
    model, _, _ = fit_autoencoder(ds, n_components=3, architecture="conv", **TINY)
    cpu_scores, cpu_partials = ae_project(ds, model)
    gpu_scores, gpu_partials = ae_project(to_device(ds, resolve_device("gpu")), model)
    s = gpu_scores.data.compute()
    assert type(s).__module__.startswith("cupy")
    np.testing.assert_allclose(s.get(), cpu_scores.values, rtol=1e-4, atol=1e-4)
    g = summarize_ae_metrics(gpu_partials.compute())
    assert g["rmse"] == pytest.approx(summarize_ae_metrics(cpu_partials.compute())["rmse"], 1e-4)
