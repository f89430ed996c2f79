"""The Python API of issue 14: ``cubepipe.pipeline``'s operations and the ``ds.cubepipe``
accessor give what the CLI writes, bit for bit, and agree with independent references
(scikit-learn's PCA, a NumPy reconstruction from the stored model arrays)."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from sklearn.decomposition import PCA

import cubepipe.pipeline
from cubepipe.pipeline import (
    compress,
    destandardize,
    filter_cube,
    fit_stats,
    load_model,
    prepare_compress,
    reconstruct,
    standardize,
)
from cubepipe.pipeline.backend import resolve_device, to_device
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import InputError, history, open_cube, read_attrs, write_cube

from ..conftest import cube_chunk_reads


def _bits(a: xr.DataArray | np.ndarray) -> bytes:
    a = np.asarray(a)
    return a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()


def test_the_operations_import_from_the_package() -> None:
    for name in (
        "fit_stats",
        "standardize",
        "destandardize",
        "compress",
        "reconstruct",
        "filter_cube",
        "load_model",
    ):
        assert name in cubepipe.pipeline.__all__ and callable(getattr(cubepipe.pipeline, name))
    assert filter_cube is cubepipe.pipeline.filters.filter_cube
    assert fit_stats is cubepipe.pipeline.stats.fit_stats


def test_compress_gives_the_cli_output_bit_for_bit(cli, small_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.zarr"
    proc = cli("compress", str(small_store), "-o", str(out), "-k", "5")
    assert proc.returncode == 0, proc.stderr
    written = open_cube(out)
    for opened in (xr.open_zarr(small_store), open_cube(small_store)):
        ours = compress(opened, components=5)
        assert sorted(ours.data_vars) == sorted(written.data_vars)
        for name in written.data_vars:
            assert _bits(ours[name].values) == _bits(written[name].values), name
        assert ours["scores"].dims == ("component", "y", "x")
        assert ours["scores"].dtype == np.float32
        assert ours["pca_components"].dtype == np.float64
    by_accessor = xr.open_zarr(small_store).cubepipe.compress(components=5)
    assert _bits(by_accessor["scores"].values) == _bits(written["scores"].values)


def test_prepare_compress_writes_the_cli_results_in_one_read_of_the_input(
    cli, small_store: Path, tmp_path: Path, counting_open
) -> None:
    ref = tmp_path / "cli.zarr"
    assert cli("compress", str(small_store), "-o", str(ref), "-k", "4", "--whiten").returncode == 0
    ds, reads = counting_open(small_store)
    job = prepare_compress(ds, components=4, whiten=True)  # the fit: one read
    path = job.write(tmp_path / "api.zarr", inputs=[str(small_store)])
    got = cube_chunk_reads(reads)
    assert len(got) == 12 and max(got.values()) <= 2  # fit + encode/metrics: two reads
    mine, theirs = history(read_attrs(path))[-1], history(read_attrs(ref))[-1]
    assert mine["params"] == theirs["params"] and mine["results"] == theirs["results"]
    assert _bits(open_cube(path)["scores"].values) == _bits(open_cube(ref)["scores"].values)
    assert job.metrics() == mine["results"]  # measured alone: the same numbers
    assert job.components == 4 and job.method == "pca"


def test_pca_scores_agree_with_scikit_learn() -> None:
    ds = make_cube((12, 70, 90), seed=21, chunks={"y": 32, "x": 40})
    out = compress(ds, components=4)
    x = ds["cube"].values
    ok = ~np.isnan(x).any(axis=0)
    pixels = x[:, ok].T.astype(np.float64)  # (valid pixel, band)
    ref = PCA(n_components=4, svd_solver="full").fit(pixels)
    theirs = ref.transform(pixels)  # (pixel, component)
    scores = out["scores"].values
    assert np.isnan(scores[:, ~ok]).all()
    ours = scores[:, ok].T.astype(np.float64)
    signs = np.sign(np.sum(ours * theirs, axis=0))
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours * signs, theirs, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(
        out["pca_explained_variance"].values, ref.explained_variance_, rtol=1e-6
    )


@pytest.mark.parametrize("options", [{}, {"standardize": True, "whiten": True}])
def test_reconstruct_matches_numpy_from_the_stored_model(
    tmp_path: Path, options: dict[str, bool]
) -> None:
    ds = make_cube((9, 50, 60), seed=22, chunks={"y": 25, "x": 30})
    path = prepare_compress(ds, components=3, **options).write(tmp_path / "c.zarr")
    stored = xr.open_zarr(path)  # plain xarray: the arrays as they are on disk
    w = stored["pca_components"].values  # (component, band)
    s = stored["scores"].values.astype(np.float64)  # (component, y, x)
    factor = np.ones(3)
    if options.get("whiten"):
        factor = np.sqrt(stored["pca_explained_variance"].values)
    u = np.einsum("kb,kyx->byx", w, s * factor[:, None, None])
    want = u * stored["pca_scale"].values[:, None, None] + stored["pca_mean"].values[:, None, None]
    for got in (reconstruct(open_cube(path)), reconstruct(path), stored.cubepipe.reconstruct()):
        cube = got["cube"]
        assert cube.dims == ("band", "y", "x") and cube.dtype == np.float32
        np.testing.assert_allclose(cube.values, want.astype(np.float32), rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="no 'scores'"):
        reconstruct(ds)


def test_accessor_round_trip_through_stores(tmp_path: Path) -> None:
    ds = make_cube((8, 40, 50), seed=23, chunks={"y": 20, "x": 25})
    src = ds.cubepipe.to_store(tmp_path / "in.zarr", op="fixture")
    cube = open_cube(src)
    comp = cube.cubepipe.compress(components=3).cubepipe.to_store(tmp_path / "c.zarr")
    stored = open_cube(comp)
    assert _bits(stored["scores"].values) == _bits(compress(cube, components=3)["scores"].values)
    rec = stored.cubepipe.reconstruct().cubepipe.to_store(tmp_path / "r.zarr", op="reconstruct")
    want = reconstruct(stored)["cube"].values
    assert _bits(open_cube(rec)["cube"].values) == _bits(want)
    assert history(read_attrs(rec))[-1]["op"] == "reconstruct"

    stats = cube.cubepipe.stats().compute()
    np.testing.assert_array_equal(stats["stats_mean"].values, fit_stats(cube)["stats_mean"].values)
    back = cube.cubepipe.standardize().cubepipe.destandardize()
    np.testing.assert_allclose(back["cube"].values, cube["cube"].values, rtol=1e-5, atol=1e-5)
    z = standardize(cube)["cube"].values
    assert _bits(cube.cubepipe.standardize()["cube"].values) == _bits(z)
    assert _bits(destandardize(standardize(cube))["cube"].values) == _bits(back["cube"].values)
    smooth = cube.cubepipe.filter("gaussian:1", mask_nan=True)["cube"].values
    assert _bits(smooth) == _bits(filter_cube(cube, "gaussian:1", mask_nan=True)["cube"].values)


def test_a_model_reapplies_from_a_dataset_or_a_path(tmp_path: Path, no_compute) -> None:
    a = make_cube((8, 40, 40), seed=24, chunks={"y": 20, "x": 20})
    b = make_cube((8, 30, 20), seed=25, chunks={"y": 15, "x": 20})
    fitted = compress(a, components=3)
    path = write_cube(fitted, tmp_path / "a.zarr")
    model = load_model(path)
    assert set(model.data_vars) >= {"pca_components", "pca_mean", "pca_scale"}
    with no_compute:  # applying a loaded model builds the graph only
        lazy = compress(b, model=model)
    from_path = compress(b, model=path)
    from_output = compress(b, model=fitted)
    assert _bits(from_path["scores"].values) == _bits(lazy["scores"].values)
    assert _bits(from_output["scores"].values) == _bits(lazy["scores"].values)
    assert "stats_mean" not in lazy  # a given model: no fit, no statistics
    with pytest.raises(InputError, match="holds no fitted PCA model"):
        load_model(a)
    with pytest.raises(InputError, match="does not match the pca model"):
        compress(b, model=model, method="ae")


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({}, "exactly one"),
        ({"components": 2, "variance": 0.5}, "exactly one"),
        ({"components": 2, "method": "ae", "variance": 0.5}, "chooses K for PCA only"),
        ({"components": 2, "method": "vae", "whiten": True}, "applies to --method pca"),
        ({"method": "ae"}, "give --components K"),
        ({"components": 2, "method": "ae", "sample": 0.5}, "use --train-pixels"),
        ({"components": 2, "method": "ica"}, "must be one of pca, ae, vae"),
    ],
)
def test_contradictory_options_are_refused_before_reading(
    options: dict, needle: str, no_compute
) -> None:
    ds = make_cube((6, 20, 20), seed=26)
    with pytest.raises(InputError, match=needle), no_compute:
        compress(ds, **options)


def test_k_is_checked_against_the_band_count_and_options_by_name() -> None:
    ds = make_cube((6, 20, 20), seed=26)
    with pytest.raises(InputError, match="between 1 and 6"):
        compress(ds, components=99)
    with pytest.raises(TypeError, match="unexpected keyword"):
        prepare_compress(ds, component=2)


def test_an_autoencoder_through_the_api_is_the_clis(cli, small_store: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    tiny = {"hidden": (16, 8), "epochs": 2, "train_pixels": 2000, "batch_size": 256}
    out = tmp_path / "ae.zarr"
    args = ["-k", "2", "--method", "ae", "--hidden", "16,8", "--epochs", "2"]
    args += ["--train-pixels", "2000", "--batch-size", "256"]
    proc = cli("--device", "cpu", "compress", str(small_store), "-o", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    job = prepare_compress(open_cube(small_store), components=2, method="ae", device="cpu", **tiny)
    written = open_cube(out)
    assert sorted(job.dataset.data_vars) == sorted(written.data_vars)
    for name in written.data_vars:
        assert _bits(job.dataset[name].values) == _bits(written[name].values), name
    entry = history(read_attrs(out))[-1]
    assert job.params == entry["params"]
    assert job.metrics()["rmse"] == entry["results"]["rmse"]
    assert job.training["epochs_run"] == entry["results"]["training"]["epochs_run"]


def test_leading_image_dim_and_mask_are_kept() -> None:
    one = make_cube((5, 24, 30), seed=27, chunks={"y": 12, "x": 15})
    two = xr.concat([one["cube"], one["cube"] * 2], dim="image").to_dataset(name="cube")
    mask = np.ones((24, 30), bool)
    mask[:4, :5] = False
    two["mask"] = (("y", "x"), mask)
    out = compress(two, components=2)
    assert out["scores"].dims == ("image", "component", "y", "x")
    assert "mask" in out and np.isnan(out["scores"].values[:, :, :4, :5]).all()
    rec = reconstruct(out)
    assert rec["cube"].dims == ("image", "band", "y", "x") and "mask" in rec


@pytest.mark.gpu
def test_compress_on_the_gpu_agrees_with_the_cpu() -> None:
    ds = make_cube((15, 128, 160), seed=28, chunks={"y": 64, "x": 80})
    cpu = compress(ds, components=5, device="cpu")
    gpu = compress(ds, components=5, device=resolve_device("gpu"))
    assert isinstance(gpu["scores"].data, da.Array)
    got = to_device(gpu["scores"].data, "cpu").compute()
    np.testing.assert_allclose(got, cpu["scores"].values, rtol=1e-4, atol=1e-4)
    back = reconstruct(gpu, device="gpu")["cube"].data
    np.testing.assert_allclose(
        to_device(back, "cpu").compute(), reconstruct(cpu)["cube"].values, rtol=1e-4, atol=1e-4
    )
