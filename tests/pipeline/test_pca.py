"""PCA: exact float64 co-moments in one pass, agreement with scikit-learn on synthetic and
real hyperspectral cubes, invalid pixels, model re-use, and the two-read budget."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from cubepipe.pipeline.backend import resolve_device, to_device
from cubepipe.pipeline.compression.api import prepare_compress
from cubepipe.pipeline.compression.pca import (
    choose_components,
    fit_pca,
    pca_encode,
    pca_project,
    pca_reconstruct,
    reconstruction_metrics,
    summarize_metrics,
)
from cubepipe.pipeline.stats.fit import fit_stats
from cubepipe.pipeline.stats.moments import NFIELDS, band_moments
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import InputError, history, read_attrs, write_cube
from cubepipe.storage.ingest import open_input

from ..conftest import cube_chunk_reads

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TESTDATA = Path(__file__).resolve().parents[1] / "data"


def _pixels(cube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = ~np.isnan(cube).any(axis=0)
    return cube[:, ok].T.astype(np.float64), ok


def _compare_with_sklearn(ds: xr.Dataset, k: int, *, standardize: bool = False) -> None:
    model, _ = fit_pca(ds, n_components=k, standardize=standardize)
    x, ok = _pixels(ds["cube"].values)
    xs = StandardScaler().fit_transform(x) if standardize else x
    ref = PCA(n_components=k, svd_solver="full").fit(xs)
    np.testing.assert_allclose(
        model["pca_explained_variance"].values, ref.explained_variance_, rtol=1e-6
    )
    np.testing.assert_allclose(
        model["pca_explained_variance_ratio"].values, ref.explained_variance_ratio_, rtol=1e-6
    )
    ev = ref.explained_variance_
    gaps = np.minimum(np.abs(np.diff(ev, prepend=np.inf)), np.abs(np.diff(ev, append=0)))
    separated = gaps > 1e-3 * ev[0]
    cos = np.abs(np.sum(model["pca_components"].values * ref.components_, axis=1))
    assert np.all(cos[separated] >= 1 - 1e-6), cos
    if standardize:
        return
    scores = pca_project(ds, model)
    recon = pca_reconstruct(scores, model).values
    ours = np.sqrt(np.mean((recon[:, ok].T.astype(np.float64) - x) ** 2))
    theirs = np.sqrt(np.mean((ref.inverse_transform(ref.transform(x)) - x) ** 2))
    assert ours == pytest.approx(theirs, rel=1e-3)
    metrics = summarize_metrics(reconstruction_metrics(ds, scores, model).compute())
    assert metrics["rmse"] == pytest.approx(theirs, rel=1e-3)


def test_matches_sklearn_on_a_synthetic_cube() -> None:
    _compare_with_sklearn(make_cube((15, 120, 140), seed=2, chunks={"y": 50, "x": 64}), 5)


def test_matches_sklearn_standardized() -> None:
    _compare_with_sklearn(make_cube((15, 80, 90), seed=3, chunks={"y": 40}), 4, standardize=True)


def test_matches_sklearn_on_the_real_corn_kernel_envi_cube() -> None:
    ds = open_input(TESTDATA / "envi" / "corn-kernel-hyperspectral.hdr", chunks={"y": 16})
    _compare_with_sklearn(ds, 5)


def test_matches_sklearn_on_indian_pines() -> None:
    path = SHARED / "indian_pines" / "Indian_pines_corrected.npy"
    if not path.exists():
        pytest.skip(f"real data not present: {path}")
    ds = open_input(path, chunks={"y": 64, "x": 64})
    ds["cube"] = (ds["cube"] - 1000) / 500  # DN -> radiance: a signed float cube
    _compare_with_sklearn(ds, 5)


def test_offset_covariance_is_exact_where_the_uncentred_formula_fails() -> None:
    rng = np.random.default_rng(5)
    mix = rng.normal(size=(4, 4))
    x = (1000 + 0.01 * np.einsum("ij,jyx->iyx", mix, rng.normal(size=(4, 200, 250)))).astype(
        np.float32
    )
    ref = np.cov(x.reshape(4, -1).astype(np.float64), ddof=0)
    packed = band_moments(
        da.from_array(x, chunks=(4, 37, 41)), band_axis=0, kind="comoments", split_every=2
    ).compute()
    n = packed[0, NFIELDS]
    ours = packed[:, NFIELDS + 2 :] / n
    assert np.max(np.abs(ours - ref)) / np.max(np.abs(ref)) < 1e-9
    flat = x.reshape(4, -1)
    for dtype in (np.float32, np.float64):
        f = flat.astype(dtype)
        mu = f.mean(axis=1, dtype=dtype)
        uncentred = (f @ f.T) / f.shape[1] - np.outer(mu, mu)
        assert np.max(np.abs(uncentred - ref)) / np.max(np.abs(ref)) > 1e-9


def test_variance_fraction_picks_sklearns_k() -> None:
    ds = make_cube((15, 60, 70), seed=4)
    x, _ = _pixels(ds["cube"].values)
    for frac in (0.5, 0.9, 0.99, 0.999, 0.9999):
        ref = PCA(n_components=frac, svd_solver="full").fit(x)
        model, _ = fit_pca(ds, variance=frac)
        assert model.sizes["component"] == ref.n_components_, frac
    with pytest.raises(InputError, match="exactly one"):
        choose_components(np.ones(3) / 3, n_components=2, variance=0.5)
    with pytest.raises(InputError, match="between 1 and 3"):
        choose_components(np.ones(3) / 3, n_components=4, variance=None)


def test_whitened_scores_match_sklearn() -> None:
    ds = make_cube((10, 50, 60), seed=6, nan_disc=False)
    model, _ = fit_pca(ds, n_components=3, whiten=True)
    x, _ = _pixels(ds["cube"].values)
    ref = PCA(3, svd_solver="full", whiten=True).fit(x)
    ours = pca_project(ds, model).values.reshape(3, -1).T
    theirs = ref.transform(x)
    signs = np.sign(np.sum(ours * theirs, axis=0))
    np.testing.assert_allclose(ours * signs, theirs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.std(axis=0, ddof=1), 1, rtol=1e-4)


def test_invalid_pixels_are_left_out_and_stay_invalid() -> None:
    ds = make_cube((6, 40, 50), seed=7, nan_disc=False)
    cube = ds["cube"].values.copy()
    cube[2, 25, 27] = np.nan  # one band missing: the whole pixel is invalid for PCA
    mask = np.ones((40, 50), bool)
    mask[:10, :10] = False
    ds = xr.Dataset(
        {
            "cube": (("band", "y", "x"), da.from_array(cube, chunks=(6, 16, 16))),
            "mask": (("y", "x"), mask),
        }
    )
    model, stats = fit_pca(ds, n_components=2)
    assert model["pca_components"].attrs["n_samples"] == 40 * 50 - 100 - 1
    assert int(stats["stats_count"].values[2]) == 40 * 50 - 100 - 1
    assert int(stats["stats_count"].values[0]) == 40 * 50 - 100
    s = pca_project(ds, model).values
    assert np.isnan(s[:, 25, 27]).all() and np.isnan(s[:, :10, :10]).all()
    assert np.isfinite(s[:, 30:, 30:]).all()


def test_model_reapplies_to_another_store(tmp_path: Path) -> None:
    a = make_cube((8, 40, 40), seed=8)
    b = make_cube((8, 30, 20), seed=9)
    model, _ = fit_pca(a, n_components=3)
    s = pca_project(b, model).values
    x = b["cube"].values.astype(np.float64)
    w = model["pca_components"].values
    by_hand = np.einsum("kb,byx->kyx", w, x - model["pca_mean"].values[:, None, None])
    np.testing.assert_allclose(s, by_hand.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_fit_and_project_read_each_chunk_at_most_twice(tmp_path: Path, counting_open) -> None:
    path = write_cube(
        make_cube((15, 100, 120), seed=1), tmp_path / "in.zarr", chunks={"y": 50, "x": 40}
    )
    ds, reads = counting_open(path)
    reads.clear()
    prepare_compress(ds, components=4).write(tmp_path / "out.zarr")  # `cubepipe compress`
    got = cube_chunk_reads(reads)
    assert len(got) == 6 and max(got.values()) <= 2
    assert history(read_attrs(tmp_path / "out.zarr"))[-1]["results"]["rmse"] > 0


def test_encode_gives_projects_scores_and_metrics_from_one_read(
    tmp_path: Path, counting_open
) -> None:
    path = write_cube(
        make_cube((15, 100, 120), seed=1), tmp_path / "in.zarr", chunks={"y": 50, "x": 40}
    )
    ds, reads = counting_open(path)
    model, _ = fit_pca(ds, n_components=4)
    reads.clear()
    scores, partials = pca_encode(ds, model)
    s, p = dask.compute(scores.data, partials)
    got = cube_chunk_reads(reads)
    assert len(got) == 6 and set(got.values()) == {1}  # both outputs, one read per chunk
    np.testing.assert_array_equal(s, pca_project(ds, model).values)
    separate = reconstruction_metrics(ds, pca_project(ds, model), model).compute()
    ours, theirs = summarize_metrics(p), summarize_metrics(separate)
    assert ours["n_values"] == theirs["n_values"] > 0
    for key in ("rmse", "psnr_db", "sam_rad", "data_range"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-12)


def test_encode_metrics_match_a_reconstruction_by_hand() -> None:
    ds = make_cube((12, 60, 70), seed=4, chunks={"y": 25, "x": 30})
    model, _ = fit_pca(ds, n_components=3, standardize=True, whiten=True)
    scores, partials = pca_encode(ds, model)
    got = summarize_metrics(partials.compute())
    # The reference, by NumPy alone: z-scores (ddof 0), the top 3 eigenvectors of their
    # float64 covariance (numpy.linalg.eigh), projection and back.
    x = ds["cube"].values.astype(np.float64)
    ok = ~np.isnan(x).any(axis=0)
    xv = x[:, ok]  # (band, valid pixel)
    mu, sd = xv.mean(axis=1, keepdims=True), xv.std(axis=1, keepdims=True)
    z = (xv - mu) / sd
    zc = z - z.mean(axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(zc @ zc.T / zc.shape[1])
    v = vecs[:, ::-1][:, :3]  # (band, 3): largest eigenvalues first
    hv = (z - zc + v @ (v.T @ zc)) * sd + mu
    err = xv - hv
    assert got["n_values"] == err.size
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-5)
    cos = np.sum(xv * hv, 0) / np.linalg.norm(xv, axis=0) / np.linalg.norm(hv, axis=0)
    assert got["sam_rad"] == pytest.approx(np.mean(np.arccos(np.clip(cos, -1, 1))), rel=1e-4)


def test_sample_fits_on_a_reproducible_fraction_of_the_chunks(
    tmp_path: Path, counting_open
) -> None:
    path = write_cube(
        make_cube((15, 100, 120), seed=1), tmp_path / "in.zarr", chunks={"y": 25, "x": 30}
    )
    ds, reads = counting_open(path)
    full, _ = fit_pca(ds, n_components=4)
    reads.clear()
    model, stats = fit_pca(ds, n_components=4, sample=0.25, seed=3)
    got = cube_chunk_reads(reads)
    assert len(got) == 4 and set(got.values()) == {1}  # 4 of the 16 chunks, once each
    attrs = model["pca_components"].attrs
    assert attrs["sample_chunks"] == 4 and attrs["sample_fraction"] == 0.25
    assert stats.attrs["sample_fraction"] == 0.25
    again, _ = fit_pca(ds, n_components=4, sample=0.25, seed=3)
    np.testing.assert_array_equal(again["pca_components"].values, model["pca_components"].values)
    other, _ = fit_pca(ds, n_components=4, sample=0.25, seed=4)
    assert not np.array_equal(other["pca_components"].values, model["pca_components"].values)
    everything, _ = fit_pca(ds, n_components=4, sample=1.0)
    np.testing.assert_allclose(
        everything["pca_explained_variance"].values,
        full["pca_explained_variance"].values,
        rtol=1e-12,
    )
    with pytest.raises(InputError, match="sample fraction"):
        fit_pca(ds, n_components=4, sample=1.5)


@pytest.mark.gpu
def test_cpu_and_gpu_agree() -> None:
    ds = make_cube((15, 128, 160), seed=10, chunks={"y": 64, "x": 80})
    cpu_model, _ = fit_pca(ds, n_components=5)
    gds = to_device(ds, resolve_device("gpu"))
    gpu_model, _ = fit_pca(gds, n_components=5)
    np.testing.assert_allclose(
        gpu_model["pca_explained_variance"].values,
        cpu_model["pca_explained_variance"].values,
        rtol=1e-5,
    )
    cos = np.abs(np.sum(gpu_model["pca_components"].values * cpu_model["pca_components"].values, 1))
    assert np.all(cos > 1 - 1e-5)
    gs = pca_project(gds, cpu_model).data.compute().get()
    np.testing.assert_allclose(gs, pca_project(ds, cpu_model).values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("standardize", [False, True])
def test_encode_metrics_stay_exact_when_the_reconstruction_is_near_lossless(
    standardize: bool,
) -> None:
    # K = B on data with an offset: the error is only the float32 rounding of the scores,
    # ~1e-15 of the centred energy, where the Gram identities of the fast path cancel;
    # those strips are measured directly (GRAM_GUARD), so encode agrees with the metrics
    # computed by forming every pixel's error.
    ds = make_cube((6, 40, 50), seed=5, chunks={"y": 20, "x": 25})
    ds["cube"] = ds["cube"] + np.float32(1000.0)
    model, _ = fit_pca(ds, n_components=6, standardize=standardize)
    scores, partials = pca_encode(ds, model)
    fast = summarize_metrics(partials.compute())
    direct = summarize_metrics(reconstruction_metrics(ds, scores, model).compute())
    assert direct["rmse"] > 0
    for key in ("rmse", "sam_rad"):
        assert fast[key] == pytest.approx(direct[key], rel=1e-6), key


@pytest.mark.parametrize("one_band_nan", [False, True])
def test_statistics_of_the_fitting_pass_equal_fit_stats(one_band_nan: bool) -> None:
    # Whole invalid pixels (NaN disc, mask) take the per-band statistics from the
    # co-moments' diagonal; a value missing in one band only needs each band's own.
    ds = make_cube((5, 48, 60), seed=11, chunks={"y": 20, "x": 25})
    mask = np.ones((48, 60), bool)
    mask[40:, :7] = False
    ds["mask"] = (("y", "x"), mask)
    if one_band_nan:
        cube = ds["cube"].values.copy()
        cube[3, 5, 6] = np.nan
        ds["cube"] = (("band", "y", "x"), da.from_array(cube, chunks=(5, 20, 25)))
    _, stats = fit_pca(ds, n_components=2)
    ref = fit_stats(ds).compute()
    for k in ("stats_count", "stats_min", "stats_max"):
        np.testing.assert_array_equal(stats[k].values, ref[k].values)
    for k in ("stats_mean", "stats_std"):
        np.testing.assert_allclose(stats[k].values, ref[k].values, rtol=1e-12)
