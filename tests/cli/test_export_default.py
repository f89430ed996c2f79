"""``export`` (and ``report``) default to the store's main variable; ``reconstruct`` keeps
the band coordinates and the georeferencing (issue 18, Q4: 15 -> 5 bands).

References: tifffile and rasterio reads of the written files, ``xarray.open_zarr`` of the
stores (no cubepipe reader), NumPy's eigendecomposition of the cube's covariance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import tifffile
import xarray as xr

from cubepipe.pipeline.compression.api import compress, reconstruct
from cubepipe.storage import write_cube

B, NY, NX, K = 8, 36, 44, 5
WAVELENGTH = np.linspace(450.0, 900.0, B)
FWHM = np.full(B, 12.5) + np.arange(B)
NAMES = [f"b{i:02d}" for i in range(B)]


def _cube(seed: int = 0) -> np.ndarray:
    """Correlated signed bands: 3 latent fields mixed into ``B`` bands, plus noise."""
    rng = np.random.default_rng(seed)
    fields = rng.normal(size=(3, NY * NX))
    mix = rng.normal(size=(B, 3))
    x = mix @ fields + 0.05 * rng.normal(size=(B, NY * NX)) - 2.0
    return x.reshape(B, NY, NX).astype(np.float32)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    cube = xr.DataArray(
        da.from_array(_cube(), chunks=(B, 16, 32)),
        dims=("band", "y", "x"),
        coords={
            "band": np.arange(10, 10 + B),
            "wavelength": ("band", WAVELENGTH),
            "fwhm": ("band", FWHM),
            "band_name": ("band", NAMES),
        },
    )
    return write_cube(cube.to_dataset(name="cube"), tmp_path / "x.zarr")


def _ok(r: Any) -> None:
    assert r.returncode == 0, r.stderr


def _assert_band_coords(ds: xr.Dataset) -> None:
    np.testing.assert_array_equal(ds["band"].values, np.arange(10, 10 + B))
    np.testing.assert_array_equal(ds["wavelength"].values, WAVELENGTH)
    np.testing.assert_array_equal(ds["fwhm"].values, FWHM)
    if "band_name" in ds.coords:  # in memory (the library's Datasets)
        assert [str(v) for v in ds["band_name"].values] == NAMES
    else:  # on disk text coordinates are a root attribute (plain xarray shows it there)
        assert ds.attrs["cubepipe_text_coords"]["band_name"] == {"dims": ["band"], "values": NAMES}


def test_compressed_store_exports_its_scores_as_a_k_page_float_tiff(
    cli, store: Path, tmp_path: Path
) -> None:
    comp, tif = tmp_path / "c.zarr", tmp_path / "c.tif"
    _ok(cli("-q", "compress", str(store), "-o", str(comp), "-k", str(K)))
    r = cli("-q", "export", str(comp), "-o", str(tif))
    _ok(r)
    assert "scores" in r.stdout and f"{K} page(s)" in r.stdout
    with tifffile.TiffFile(tif) as f:
        assert len(f.pages) == K
        assert all(p.dtype == np.float32 and p.shape == (NY, NX) for p in f.pages)
        pages = f.asarray()
    z = xr.open_zarr(comp)
    scores = z["scores"].values
    assert pages.shape == (K, NY, NX)
    np.testing.assert_array_equal(pages.view(np.uint32), scores.view(np.uint32))  # bit-exact
    # the scores are the projection onto NumPy's top-K eigenvectors of the covariance
    x = _cube().reshape(B, -1).astype(np.float64)
    evals, evecs = np.linalg.eigh(np.cov(x))
    top = evecs[:, np.argsort(evals)[::-1][:K]]  # (B, K)
    w = z["pca_components"].values  # (K, B)
    np.testing.assert_allclose(w.T @ w, top @ top.T, atol=1e-8)  # the same subspace
    want = w @ (x - x.mean(axis=1, keepdims=True))
    np.testing.assert_allclose(pages.reshape(K, -1), want, rtol=0, atol=2e-5)
    # --variable still overrides the default (and is checked: pca_mean is not an image)
    r = cli("-q", "export", str(comp), "-o", str(tmp_path / "m.tif"), "--variable", "pca_mean")
    assert r.returncode == 2 and "pca_mean has dims ('band',)" in r.stderr
    r = cli("-q", "export", str(comp), "-o", str(tmp_path / "m.tif"), "--variable", "cube")
    assert r.returncode == 2 and "no variable 'cube'" in r.stderr and "scores" in r.stderr
    assert not (tmp_path / "m.tif").exists()


def test_reconstruct_keeps_band_coordinates_cli_and_library(
    cli, store: Path, tmp_path: Path
) -> None:
    comp, rec = tmp_path / "c.zarr", tmp_path / "r.zarr"
    _ok(cli("-q", "compress", str(store), "-o", str(comp), "-k", str(K), "--standardize"))
    _assert_band_coords(xr.open_zarr(comp))  # kept beside the model
    _ok(cli("-q", "reconstruct", str(comp), "-o", str(rec)))
    on_disk = xr.open_zarr(rec)
    _assert_band_coords(on_disk)
    # library: from the path and from a Dataset compressed in memory
    _assert_band_coords(reconstruct(comp))
    ds = xr.open_zarr(store)
    _assert_band_coords(reconstruct(compress(ds, components=K)))
    # the reconstruction itself: NumPy's rank-K PCA of the z-scores, back in data units
    x = _cube().reshape(B, -1).astype(np.float64)
    mu, sd = x.mean(axis=1, keepdims=True), x.std(axis=1, keepdims=True)
    z = (x - mu) / sd
    evals, evecs = np.linalg.eigh(np.corrcoef(x))
    top = evecs[:, np.argsort(evals)[::-1][:K]]
    want = (top @ top.T @ z) * sd + mu
    got = on_disk["cube"].values.reshape(B, -1)
    assert on_disk["cube"].dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-5)
    # export of the reconstruction: one page per band, wavelengths carried in the store
    _ok(cli("-q", "export", str(rec), "-o", str(tmp_path / "r.tif")))
    assert tifffile.imread(tmp_path / "r.tif").shape == (B, NY, NX)


def test_filter_output_of_another_variable_exports_by_default(cli, tmp_path: Path) -> None:
    data = _cube(1)
    refl = xr.DataArray(data, dims=("band", "y", "x")).to_dataset(name="refl")
    src = write_cube(refl, tmp_path / "refl.zarr")
    out = tmp_path / "f.zarr"
    _ok(cli("-q", "filter", str(src), "-o", str(out), "--variable", "refl", "--kernel", "box:3"))
    r = cli("-q", "export", str(out), "-o", str(tmp_path / "f.tif"))
    _ok(r)
    assert "refl" in r.stdout
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "f.tif"), xr.open_zarr(out)["refl"].values
    )


@pytest.mark.parametrize("command", ["export", "report"])
def test_store_with_neither_cube_nor_scores_is_one_line_exit_2(
    cli, tmp_path: Path, command: str
) -> None:
    data = _cube(2)
    two = xr.Dataset(
        {
            "a": (("band", "y", "x"), data),
            "b": (("band", "y", "x"), -data),
            "quality": (("y", "x"), np.ones((NY, NX), np.float32)),
        }
    )
    src = write_cube(two, tmp_path / "two.zarr")
    suffix = ".tif" if command == "export" else ".html"
    out = tmp_path / f"o{suffix}"
    r = cli("-q", command, str(src), "-o", str(out))
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("cubepipe: error:")
    for part in ("neither 'cube' nor 'scores'", "a, b, quality", "--variable"):
        assert part in line, line
    assert not out.exists()
    # --variable chooses one
    _ok(cli("-q", command, str(src), "-o", str(out), "--variable", "b"))
    if command == "export":
        np.testing.assert_array_equal(tifffile.imread(out), -data)
    else:
        assert "&#x27;b&#x27;: 8 of 8 bands" in out.read_text()


def test_store_with_no_image_shaped_variable_names_what_it_has(cli, tmp_path: Path) -> None:
    flat = xr.Dataset({"quality": (("y", "x"), np.ones((NY, NX), np.float32))})
    src = write_cube(flat, tmp_path / "flat.zarr")
    r = cli("-q", "export", str(src), "-o", str(tmp_path / "o.tif"))
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "no variable shaped" in line and "quality" in line and "--variable" in line


def test_georeferenced_compress_exports_scores_as_one_k_band_geotiff(cli, tmp_path: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    from rasterio.crs import CRS  # noqa: PLC0415
    from rasterio.transform import from_origin  # noqa: PLC0415

    data, crs = _cube(3), CRS.from_epsg(32633)
    transform = from_origin(500000.0, 4000000.0, 30.0, 30.0)
    src = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": NX, "height": NY, "count": B, "dtype": "float32"}
    with rasterio.open(src, "w", crs=crs, transform=transform, **profile) as f:
        f.write(data)
    steps = [
        ("ingest", str(src), "-o", str(tmp_path / "in.zarr")),
        ("compress", str(tmp_path / "in.zarr"), "-o", str(tmp_path / "c.zarr"), "-k", str(K)),
        ("reconstruct", str(tmp_path / "c.zarr"), "-o", str(tmp_path / "r.zarr")),
        ("export", str(tmp_path / "c.zarr"), "-o", str(tmp_path / "c.tif")),
    ]
    for step in steps:
        _ok(cli("-q", *step))
    with rasterio.open(tmp_path / "c.tif") as f:
        assert (f.count, f.crs, f.transform) == (K, crs, transform)
        got = f.read()
    np.testing.assert_array_equal(got, xr.open_zarr(tmp_path / "c.zarr")["scores"].values)
    rec = xr.open_zarr(tmp_path / "r.zarr")
    assert "spatial_ref" in rec.coords and rec["cube"].attrs.get("grid_mapping") == "spatial_ref"
    np.testing.assert_allclose(rec["x"].values, 500000.0 + 30.0 * (np.arange(NX) + 0.5))
    np.testing.assert_allclose(rec["y"].values, 4000000.0 - 30.0 * (np.arange(NY) + 0.5))
