"""Georeferencing: GeoTIFF and ENVI map info -> store -> every operation -> GeoTIFF.

References are rasterio (GDAL) reads of the files the tests write, the ENVI definition of
``map info`` worked out by hand, NumPy and ``xarray.open_zarr``: never cubepipe's own
readers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr

rasterio = pytest.importorskip("rasterio")
from rasterio.crs import CRS  # noqa: E402
from rasterio.transform import Affine, from_origin  # noqa: E402

from cubepipe.storage.geo import georef_of  # noqa: E402
from cubepipe.storage.ingest import open_input  # noqa: E402

UTM33 = CRS.from_epsg(32633)
TRANSFORM = from_origin(500000.0, 4000000.0, 30.0, 30.0)


def _scene(shape: tuple[int, int, int] = (4, 48, 64), seed: int = 0) -> np.ndarray:
    """Signed float32 values, mostly negative, correlated across bands."""
    rng = np.random.default_rng(seed)
    base = rng.normal(-40.0, 25.0, size=shape[1:])
    return np.stack([base * (1 + 0.1 * b) + rng.normal(0, 2, shape[1:]) for b in range(shape[0])])


def write_geotiff(
    path: Path, data: np.ndarray, *, crs: CRS = UTM33, transform: Affine = TRANSFORM
) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype="float32",
        crs=crs,
        transform=transform,
    ) as dst:
        dst.write(data.astype("float32"))
    return path


def _read(path: Path) -> tuple[np.ndarray, CRS, Affine]:
    with rasterio.open(path) as src:
        return src.read(), src.crs, src.transform


def _centres(transform: Affine, ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates by rasterio (the reference for the store's y/x)."""
    xs, _ = rasterio.transform.xy(transform, np.zeros(nx), np.arange(nx))
    _, ys = rasterio.transform.xy(transform, np.arange(ny), np.zeros(ny))
    return np.asarray(ys), np.asarray(xs)


def _assert_georeferenced(store: Path, transform: Affine = TRANSFORM) -> None:
    ds = xr.open_zarr(store)  # plain xarray, as a user without cubepipe opens it
    assert "spatial_ref" in ds.coords
    ref = ds["spatial_ref"].attrs
    assert CRS.from_wkt(ref["crs_wkt"]) == UTM33 and ref["spatial_ref"] == ref["crs_wkt"]
    gt = [float(v) for v in ref["GeoTransform"].split()]
    assert Affine.from_gdal(*gt) == transform
    ys, xs = _centres(transform, ds.sizes["y"], ds.sizes["x"])
    np.testing.assert_allclose(ds["y"].values, ys, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds["x"].values, xs, rtol=0, atol=1e-6)
    for name, var in ds.data_vars.items():
        if {"y", "x"} <= set(var.dims) and name != "mask":
            assert var.attrs["grid_mapping"] == "spatial_ref", name


def test_geotiff_survives_ingest_standardize_compress_export(cli, tmp_path: Path) -> None:
    data = _scene()
    src = write_geotiff(tmp_path / "scene.tif", data)
    ref, _, _ = _read(src)
    steps = [
        ("ingest", str(src), "-o", str(tmp_path / "in.zarr")),
        ("standardize", str(tmp_path / "in.zarr"), "-o", str(tmp_path / "std.zarr")),
        ("compress", str(tmp_path / "std.zarr"), "-o", str(tmp_path / "pca.zarr"), "-k", "2"),
        ("reconstruct", str(tmp_path / "pca.zarr"), "-o", str(tmp_path / "rec.zarr")),
        ("destandardize", str(tmp_path / "std.zarr"), "-o", str(tmp_path / "back.zarr")),
        ("filter", str(tmp_path / "in.zarr"), "-o", str(tmp_path / "f.zarr"), "--kernel", "box:3"),
    ]
    for step in steps:
        r = cli("-q", *step)
        assert r.returncode == 0, (step, r.stderr)
    for name in ("in", "std", "pca", "rec", "back", "f"):
        _assert_georeferenced(tmp_path / f"{name}.zarr")
    assert cli("-q", "stats", str(tmp_path / "in.zarr")).returncode == 0
    _assert_georeferenced(tmp_path / "in.zarr")
    info = cli("info", str(tmp_path / "pca.zarr"))
    assert info.returncode == 0 and "georef     EPSG:32633, transform " in info.stdout
    gdal = " ".join(str(v) for v in TRANSFORM.to_gdal())
    assert (
        json.loads(cli("info", "--json", str(tmp_path / "rec.zarr")).stdout)["georef"][
            "transform"
        ].split()
        == gdal.split()
    )

    exports = {
        "in.tif": ("in.zarr", "cube"),
        "std.tif": ("std.zarr", "cube"),
        "scores.tif": ("pca.zarr", "scores"),
    }
    for out, (store, var) in exports.items():
        r = cli("-q", "export", str(tmp_path / store), "-o", str(tmp_path / out), "--variable", var)
        assert r.returncode == 0, r.stderr
        assert "GeoTIFF EPSG:32633" in r.stdout
        got, crs, transform = _read(tmp_path / out)
        assert crs == UTM33 and transform == TRANSFORM
        np.testing.assert_array_equal(got, xr.open_zarr(tmp_path / store)[var].values)
    np.testing.assert_array_equal(_read(tmp_path / "in.tif")[0], ref)
    # standardized values against NumPy's population z-scores of the GeoTIFF
    wide = ref.astype(np.float64)
    z = (wide - wide.mean(axis=(1, 2), keepdims=True)) / wide.std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(_read(tmp_path / "std.tif")[0], z, rtol=0, atol=2e-6)
    assert _read(tmp_path / "scores.tif")[0].shape == (2, 48, 64)


def test_export_of_selected_bands_and_of_npy(cli, tmp_path: Path) -> None:
    src = write_geotiff(tmp_path / "s.tif", _scene((3, 20, 30)))
    ref, _, _ = _read(src)
    assert cli("-q", "ingest", str(src), "-o", str(tmp_path / "s.zarr")).returncode == 0
    r = cli(
        "-q", "export", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "b.tif"), "--bands", "2,0"
    )
    assert r.returncode == 0, r.stderr
    got, crs, transform = _read(tmp_path / "b.tif")
    assert crs == UTM33 and transform == TRANSFORM
    np.testing.assert_array_equal(got, ref[[2, 0]])
    r = cli("export", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "s.npy"))
    assert r.returncode == 0 and "no georeferencing" in r.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), ref)


def test_rotated_transform_round_trips_without_xy(cli, tmp_path: Path) -> None:
    rotated = Affine(30.0, 5.0, 500000.0, 4.0, -30.0, 4000000.0)
    src = write_geotiff(tmp_path / "r.tif", _scene((2, 10, 12)), transform=rotated)
    assert cli("-q", "ingest", str(src), "-o", str(tmp_path / "r.zarr")).returncode == 0
    ds = xr.open_zarr(tmp_path / "r.zarr")
    assert "x" not in ds.coords and "y" not in ds.coords
    assert (
        cli("-q", "export", str(tmp_path / "r.zarr"), "-o", str(tmp_path / "r2.tif")).returncode
        == 0
    )
    _, crs, transform = _read(tmp_path / "r2.tif")
    assert crs == UTM33 and transform.almost_equals(rotated, precision=1e-9)


def test_subset_keeps_its_place(tmp_path: Path) -> None:
    src = write_geotiff(tmp_path / "s.tif", _scene((2, 20, 30)))
    ds = open_input(src).isel(y=slice(5, 15), x=slice(10, 25))
    got = georef_of(ds)
    assert got is not None
    expected = TRANSFORM @ Affine.translation(10, 5)
    assert Affine(*got.transform).almost_equals(expected, precision=1e-9)


def write_envi(folder: Path, data: np.ndarray, map_info: str | None, name: str = "e") -> Path:
    """A BSQ float32 ENVI pair with an optional ``map info`` line."""
    data.astype("<f4").tofile(folder / f"{name}.img")
    bands, lines, samples = data.shape
    text = [
        "ENVI",
        f"samples = {samples}",
        f"lines = {lines}",
        f"bands = {bands}",
        "header offset = 0",
        "data type = 4",
        "interleave = bsq",
        "byte order = 0",
        "wavelength units = Nanometers",
        "wavelength = {" + ", ".join(str(450 + 10 * b) for b in range(bands)) + "}",
    ]
    if map_info:
        text.append(f"map info = {{{map_info}}}")
    (folder / f"{name}.hdr").write_text("\n".join(text) + "\n")
    return folder / f"{name}.hdr"


@pytest.mark.parametrize(
    ("tie", "origin"),
    [
        # ENVI: pixel (1, 1) is the top left corner of the first pixel; (1.5, 1.5) its centre
        ("1.000, 1.000, 500000.000, 4000000.000", (500000.0, 4000000.0)),
        ("1.500, 1.500, 500015.000, 3999985.000", (500000.0, 4000000.0)),
        ("11.000, 6.000, 500300.000, 3999850.000", (500000.0, 4000000.0)),
    ],
)
def test_envi_map_info_round_trips(cli, tmp_path: Path, tie: str, origin: tuple) -> None:
    data = _scene((3, 12, 16)).astype(np.float32)
    info = f"UTM, {tie}, 3.0000000000e+001, 3.0000000000e+001, 33, North, WGS-84, units=Meters"
    hdr = write_envi(tmp_path, data, info)
    assert cli("-q", "ingest", str(hdr), "-o", str(tmp_path / "e.zarr")).returncode == 0
    expected = from_origin(*origin, 30.0, 30.0)
    _assert_georeferenced(tmp_path / "e.zarr", expected)
    r = cli("-q", "export", str(tmp_path / "e.zarr"), "-o", str(tmp_path / "e.tif"))
    assert r.returncode == 0, r.stderr
    got, crs, transform = _read(tmp_path / "e.tif")
    assert crs == UTM33 and transform.almost_equals(expected, precision=1e-9)
    np.testing.assert_array_equal(got, data)


def test_envi_arbitrary_map_info_is_no_georeferencing(tmp_path: Path) -> None:
    hdr = write_envi(
        tmp_path, _scene((2, 5, 6)), "Arbitrary, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0, North"
    )
    ds = open_input(hdr)
    assert "spatial_ref" not in ds.coords and georef_of(ds) is None


def _tiff_with_geokeys(path: Path, keys: list[int] | None) -> Path:
    """A float TIFF with a 30 m tie point and the raw GeoKeyDirectory ``keys``."""
    tags = [(33550, "d", 3, (30.0, 30.0, 0.0)), (33922, "d", 6, (0, 0, 0, 500000.0, 4e6, 0))]
    if keys is not None:
        tags.append((34735, "H", len(keys), keys))
    tifffile.imwrite(path, np.full((6, 7), -3.5, np.float32), extratags=tags)
    return path


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        # ProjectedCSTypeGeoKey = 65000: a private code, no CRS in any registry
        ([1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 65000], "unknown coordinate"),
        # geographic, but neither a code nor a datum
        ([1, 1, 0, 1, 1024, 0, 1, 2], "unknown coordinate"),
        (None, "no coordinate system"),
    ],
)
def test_geotiff_with_broken_crs_is_one_line_exit_2(
    cli, tmp_path: Path, keys: list[int] | None, said: str
) -> None:
    src = _tiff_with_geokeys(tmp_path / "bad.tif", keys)
    r = cli("ingest", str(src), "-o", str(tmp_path / "bad.zarr"))
    assert r.returncode == 2, r.stderr
    assert said in r.stderr and "--no-georef" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.zarr").exists()
    ok = cli("-q", "ingest", str(src), "-o", str(tmp_path / "ok.zarr"), "--no-georef")
    assert ok.returncode == 0, ok.stderr
    assert "spatial_ref" not in xr.open_zarr(tmp_path / "ok.zarr").coords


def test_geotiff_with_a_crs_but_no_transform_is_one_line_exit_2(cli, tmp_path: Path) -> None:
    keys = [1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32633]
    src = tmp_path / "nowhere.tif"
    tifffile.imwrite(src, np.ones((4, 5), np.float32), extratags=[(34735, "H", len(keys), keys)])
    r = cli("ingest", str(src), "-o", str(tmp_path / "n.zarr"))
    assert r.returncode == 2 and "no transform" in r.stderr and "--no-georef" in r.stderr
    assert not (tmp_path / "n.zarr").exists()


def test_envi_coordinate_system_without_map_info_places_nothing(tmp_path: Path) -> None:
    hdr = write_envi(tmp_path, _scene((2, 5, 6)), None)
    wkt = UTM33.to_wkt()
    hdr.write_text(hdr.read_text() + f"coordinate system string = {{{wkt}}}\n")
    assert "spatial_ref" not in open_input(hdr).coords


def test_without_rasterio_only_georeferencing_needs_the_geo_extra(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.arange(-6, 6, dtype=np.float32).reshape(3, 4))
    geo = write_geotiff(tmp_path / "geo.tif", _scene((2, 5, 6)))
    assert cli("-q", "ingest", str(geo), "-o", str(tmp_path / "geo.zarr")).returncode == 0
    monkeypatch.setitem(sys.modules, "rasterio", None)  # `import rasterio` now fails
    r = cli("-q", "ingest", str(plain), "-o", str(tmp_path / "plain.zarr"))
    assert r.returncode == 0, r.stderr
    r = cli("ingest", str(geo), "-o", str(tmp_path / "g2.zarr"))
    assert r.returncode == 2 and "cubepipe[geo]" in r.stderr and "rasterio" in r.stderr
    assert not (tmp_path / "g2.zarr").exists()
    r = cli("export", str(tmp_path / "geo.zarr"), "-o", str(tmp_path / "g.tif"))
    assert r.returncode == 2 and "cubepipe[geo]" in r.stderr
    assert not (tmp_path / "g.tif").exists()
    assert (
        cli("-q", "export", str(tmp_path / "plain.zarr"), "-o", str(tmp_path / "p.tif")).returncode
        == 0
    )


def test_the_library_carries_georeferencing_through_compress_and_reconstruct(
    tmp_path: Path,
) -> None:
    from cubepipe.pipeline import compress, reconstruct  # noqa: PLC0415

    src = write_geotiff(tmp_path / "s.tif", _scene((4, 20, 30)))
    ds = open_input(src)
    scores = compress(ds, components=2)
    rebuilt = reconstruct(scores)
    for out, var in ((scores, "scores"), (rebuilt, "cube")):
        got = georef_of(out)
        assert got is not None, var
        assert Affine(*got.transform).almost_equals(TRANSFORM, precision=1e-9)
        assert out[var].attrs.get("grid_mapping") == "spatial_ref"
