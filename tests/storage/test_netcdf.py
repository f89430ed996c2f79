"""NetCDF/HDF5 ingest: files written by xarray (h5netcdf) and h5py, read back lazily.

References are the arrays the tests write and rasterio's CRS: never cubepipe's output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

h5py = pytest.importorskip("h5py")
pytest.importorskip("h5netcdf")
rasterio = pytest.importorskip("rasterio")
from rasterio.crs import CRS  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from cubepipe.storage.errors import MissingDependencyError  # noqa: E402
from cubepipe.storage.geo import georef_of  # noqa: E402
from cubepipe.storage.ingest import open_input  # noqa: E402
from cubepipe.storage.readers import detect_format  # noqa: E402

WAVELENGTHS = np.array([412.5, 443.0, 490.0, 560.0, 665.0, 705.0])
FWHM = np.array([10.0, 10.0, 10.0, 10.0, 15.0, 15.0])


def _reflectance(shape: tuple[int, int, int] = (6, 20, 24), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.1, 0.2, size=shape).astype(np.float32)  # negatives included


def write_scene(path: Path, data: np.ndarray, *, grid_mapping: str | None = "wkt") -> Path:
    """A (wavelength, y, x) reflectance variable as EMIT-like products store it."""
    nb, ny, nx = data.shape
    coords: dict = {
        "wavelength": ("wavelength", WAVELENGTHS[:nb], {"units": "nm"}),
        "fwhm": ("wavelength", FWHM[:nb], {"units": "nm"}),
        "y": ("y", 4000000.0 - 15.0 - 30.0 * np.arange(ny), {"units": "m"}),
        "x": ("x", 500015.0 + 30.0 * np.arange(nx), {"units": "m"}),
    }
    attrs = {"units": "1", "long_name": "surface reflectance"}
    if grid_mapping == "wkt":
        coords["crs"] = ((), 0, {"crs_wkt": CRS.from_epsg(32633).to_wkt()})
        attrs["grid_mapping"] = "crs"
    elif grid_mapping == "cf":  # CF projection parameters only, as netCDF-Java writes them
        coords["crs"] = (
            (),
            0,
            {
                "grid_mapping_name": "transverse_mercator",
                "longitude_of_central_meridian": 15.0,
                "latitude_of_projection_origin": 0.0,
                "scale_factor_at_central_meridian": 0.9996,
                "false_easting": 500000.0,
                "false_northing": 0.0,
                "semi_major_axis": 6378137.0,
                "inverse_flattening": 298.257223563,
            },
        )
        attrs["grid_mapping"] = "crs"
    ds = xr.Dataset(
        {
            "reflectance": (("wavelength", "y", "x"), data, attrs),
            "quality": (("y", "x"), np.zeros((ny, nx), np.uint8)),
        },
        coords=coords,
    )
    ds.to_netcdf(
        path,
        engine="h5netcdf",
        encoding={"reflectance": {"chunksizes": (nb, min(ny, 8), min(nx, 8))}},
    )
    return path


@pytest.mark.parametrize("grid_mapping", ["wkt", "cf"])
def test_reflectance_with_wavelengths_and_grid_mapping(
    tmp_path: Path, grid_mapping: str, no_compute
) -> None:
    data = _reflectance()
    path = write_scene(tmp_path / "scene.nc", data, grid_mapping=grid_mapping)
    assert detect_format(path).name == "netcdf"
    with no_compute:  # opening reads metadata only
        ds = open_input(path, chunks={"y": 8, "x": 16})
    cube = ds["cube"]
    assert cube.dims == ("band", "y", "x") and cube.dtype == np.float32
    assert cube.data.numblocks == (1, 3, 2)
    assert any(
        n.startswith("cubepipe-ingest-read-netcdf-reflectance") for n in cube.data.dask.layers
    )
    np.testing.assert_array_equal(cube.values, data)
    np.testing.assert_array_equal(ds["wavelength"].values, WAVELENGTHS)
    np.testing.assert_array_equal(ds["fwhm"].values, FWHM)
    assert ds["wavelength"].attrs["units"] == "nm"
    got = georef_of(ds)
    assert got is not None
    # CF parameters define the projection, not the EPSG name: equivalent, not identical
    assert CRS.from_wkt(got.crs_wkt).to_epsg() == 32633
    assert got.transform == tuple(from_origin(500000.0, 4000000.0, 30.0, 30.0))[:6]


def test_cli_ingest_and_geotiff_export_of_netcdf(cli, tmp_path: Path) -> None:
    data = _reflectance()
    path = write_scene(tmp_path / "scene.nc", data)
    r = cli("-q", "ingest", str(path), "-o", str(tmp_path / "s.zarr"))
    assert r.returncode == 0, r.stderr
    store = xr.open_zarr(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store["cube"].values, data)
    np.testing.assert_array_equal(store["wavelength"].values, WAVELENGTHS)
    r = cli("-q", "export", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "s.tif"))
    assert r.returncode == 0, r.stderr
    with rasterio.open(tmp_path / "s.tif") as src:
        assert src.crs == CRS.from_epsg(32633)
        assert src.transform == from_origin(500000.0, 4000000.0, 30.0, 30.0)
        np.testing.assert_array_equal(src.read(), data)


def test_band_last_in_micrometres_on_lat_lon(tmp_path: Path) -> None:
    data = _reflectance((4, 5, 7))
    lat, lon = 45.0 - 0.01 * np.arange(5), 9.0 + 0.01 * np.arange(7)
    ds = xr.Dataset(
        {"rad": (("lat", "lon", "bands"), data.transpose(1, 2, 0))},
        coords={
            "lat": ("lat", lat, {"units": "degrees_north"}),
            "lon": ("lon", lon, {"units": "degrees_east"}),
            "wl": ("bands", WAVELENGTHS[:4] / 1000, {"units": "micrometers"}),
        },
    )
    ds.to_netcdf(tmp_path / "bip.nc", engine="h5netcdf")
    out = open_input(tmp_path / "bip.nc")
    np.testing.assert_array_equal(out["cube"].values, data)
    np.testing.assert_allclose(out["wavelength"].values, WAVELENGTHS[:4], rtol=1e-12)
    assert out["wavelength"].attrs == {"units": "nm", "converted_from": "micrometers"}
    np.testing.assert_array_equal(out["y"].values, lat)
    assert CRS.from_wkt(out["spatial_ref"].attrs["crs_wkt"]) == CRS.from_epsg(4326)


def test_plain_hdf5_in_a_group_with_named_dims(cli, tmp_path: Path) -> None:
    data = np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5) - 60
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f.create_group("grp").create_dataset("cube", data=data, chunks=(4, 3, 5))
    dims = "phony_dim_0,phony_dim_1,phony_dim_2"
    r = cli("-q", "ingest", str(tmp_path / "plain.h5"), "-o", str(tmp_path / "p.zarr"))
    assert r.returncode == 2 and "--variable GROUP/NAME" in r.stderr
    args = ["--variable", "grp/cube", "--dims", dims]
    r = cli("-q", "ingest", str(tmp_path / "plain.h5"), "-o", str(tmp_path / "p.zarr"), *args)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "p.zarr")["cube"].values, data)


def test_choosing_among_variables_and_dims(cli, tmp_path: Path) -> None:
    a, b = _reflectance((3, 4, 5), 1), _reflectance((3, 4, 5), 2)
    xr.Dataset({"a": (("p", "q", "r"), a), "b": (("p", "q", "r"), b)}).to_netcdf(
        tmp_path / "two.nc", engine="h5netcdf"
    )
    out = tmp_path / "two.zarr"
    r = cli("ingest", str(tmp_path / "two.nc"), "-o", str(out))
    assert r.returncode == 2 and "--variable" in r.stderr and "a ('p', 'q', 'r')" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    r = cli("ingest", str(tmp_path / "two.nc"), "-o", str(out), "--variable", "b")
    assert r.returncode == 2 and "--dims BAND,Y,X" in r.stderr and not out.exists()
    r = cli("ingest", str(tmp_path / "two.nc"), "-o", str(out), "--variable", "b", "--dims", "p,x")
    assert r.returncode == 2 and "once each" in r.stderr and not out.exists()
    r = cli("ingest", str(tmp_path / "two.nc"), "-o", str(out), "--variable", "c")
    assert r.returncode == 2 and "no variable 'c'" in r.stderr and not out.exists()
    r = cli(
        "-q",
        "ingest",
        str(tmp_path / "two.nc"),
        "-o",
        str(out),
        "--variable",
        "b",
        "--dims",
        "r,p,q",
    )
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(xr.open_zarr(out)["cube"].values, b.transpose(2, 0, 1))


def test_hostile_files_are_one_line_exit_2(cli, tmp_path: Path) -> None:
    xr.Dataset({"img": (("y", "x"), np.ones((3, 4)))}).to_netcdf(
        tmp_path / "flat.nc", engine="h5netcdf"
    )
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00garbage" * 64)
    write_scene(tmp_path / "s.nc", _reflectance((2, 3, 4)), grid_mapping=None)
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "t.tif", np.ones((3, 4), np.float32))
    cases = [
        (["flat.nc"], "no 3-D numeric variable"),
        (["broken.h5"], "not a readable NetCDF/HDF5 file"),
        (["t.tif", "--variable", "x"], "--variable applies to netcdf inputs only"),
    ]
    for args, said in cases:
        out = tmp_path / "o.zarr"
        r = cli("ingest", str(tmp_path / args[0]), *args[1:], "-o", str(out))
        assert r.returncode == 2, (args, r.stderr)
        assert said in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists()


def test_grid_mapping_that_is_missing_or_unknown(cli, tmp_path: Path) -> None:
    data = _reflectance((2, 3, 4))
    ds = xr.Dataset(
        {"r": (("band", "y", "x"), data, {"grid_mapping": "nowhere"})},
    )
    ds.to_netcdf(tmp_path / "m.nc", engine="h5netcdf")
    r = cli("ingest", str(tmp_path / "m.nc"), "-o", str(tmp_path / "m.zarr"))
    assert r.returncode == 2 and "'nowhere'" in r.stderr and not (tmp_path / "m.zarr").exists()
    ds = ds.assign_coords(crs=((), 0, {"crs_wkt": "this is not a CRS"}))
    ds["r"].attrs["grid_mapping"] = "crs"
    ds.to_netcdf(tmp_path / "u.nc", engine="h5netcdf")
    r = cli("ingest", str(tmp_path / "u.nc"), "-o", str(tmp_path / "u.zarr"))
    assert r.returncode == 2 and "not a coordinate system GDAL knows" in r.stderr
    r = cli("-q", "ingest", str(tmp_path / "u.nc"), "-o", str(tmp_path / "u.zarr"), "--no-georef")
    assert r.returncode == 0, r.stderr


def test_missing_h5netcdf_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_scene(tmp_path / "s.nc", _reflectance((2, 3, 4)))
    monkeypatch.setitem(sys.modules, "h5netcdf", None)
    with pytest.raises(MissingDependencyError, match=r"cubepipe\[netcdf\]"):
        open_input(path)


def test_blocks_read_only_their_hyperslab(tmp_path: Path) -> None:
    data = _reflectance((6, 32, 32))
    path = write_scene(tmp_path / "s.nc", data)
    cube = open_input(path, chunks={"y": 8, "x": 8})["cube"]
    with dask.config.set(scheduler="sync"):
        part = cube.isel(y=slice(8, 16), x=slice(24, 32)).values
    np.testing.assert_array_equal(part, data[:, 8:16, 24:32])
