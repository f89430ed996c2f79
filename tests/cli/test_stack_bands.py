"""``cubepipe ingest --stack bands``: one file per band -> one (band, y, x) cube.

References: NumPy stacks of tifffile reads, rasterio's CRS/transform, the USGS band
edges; never cubepipe's own readers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr

from cubepipe.storage import open_cube

LANDSAT = Path(__file__).resolve().parents[3] / "shared" / "data" / "landsat8"
needs_landsat = pytest.mark.skipif(
    not (LANDSAT / "l8_B1.tif").is_file(), reason=f"Landsat sample not found at {LANDSAT}"
)
#: USGS Landsat 8 OLI/TIRS band edges in micrometres (LSDS-1574), written out here again.
EDGES_UM = {
    1: (0.433, 0.453),
    2: (0.450, 0.515),
    3: (0.525, 0.600),
    4: (0.630, 0.680),
    5: (0.845, 0.885),
    6: (1.560, 1.660),
    7: (2.100, 2.300),
    9: (1.360, 1.390),
    10: (10.60, 11.19),
    11: (11.50, 12.51),
}


@needs_landsat
def test_landsat_bands_stack_and_compress(cli, tmp_path: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    out = tmp_path / "l8.zarr"
    r = cli("ingest", "--stack", "bands", str(LANDSAT / "l8_B[0-9]*.tif"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "cube (band=10, y=603, x=627) float32" in r.stdout and "B1 443 nm" in r.stdout
    numbers = sorted(EDGES_UM)  # band-number order, not the glob's B1, B10, B11, B2...
    ref = np.stack([tifffile.imread(LANDSAT / f"l8_B{b}.tif") for b in numbers])
    ds = xr.open_zarr(out)
    assert ds["cube"].dims == ("band", "y", "x")
    np.testing.assert_array_equal(ds["cube"].values, ref.astype(np.float32))
    names = open_cube(out)["band_name"].values  # text coordinates: cubepipe's encoding
    assert list(names) == [f"B{b}" for b in numbers]
    centre = [1000 * (lo + hi) / 2 for lo, hi in (EDGES_UM[b] for b in numbers)]
    np.testing.assert_allclose(ds["wavelength"].values, centre, rtol=1e-12)
    np.testing.assert_allclose(
        ds["fwhm"].values, [1000 * (EDGES_UM[b][1] - EDGES_UM[b][0]) for b in numbers], rtol=1e-9
    )
    with rasterio.open(LANDSAT / "l8_B1.tif") as src:
        crs, transform = src.crs, src.transform
    crs_type = pytest.importorskip("rasterio.crs").CRS
    affine = pytest.importorskip("rasterio.transform").Affine
    sr = ds["spatial_ref"].attrs
    assert crs_type.from_wkt(sr["crs_wkt"]) == crs
    assert affine.from_gdal(*map(float, sr["GeoTransform"].split())) == transform

    pca = tmp_path / "pca.zarr"
    r = cli("compress", str(out), "-o", str(pca), "-k", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("compress: 3 components explain")
    scores = xr.open_zarr(pca)["scores"]
    assert scores.dims == ("component", "y", "x") and scores.shape == (3, 603, 627)
    assert "spatial_ref" in scores.coords
    r = cli("-q", "export", str(pca), "--variable", "scores", "-o", str(tmp_path / "s.tif"))
    assert r.returncode == 0, r.stderr
    with rasterio.open(tmp_path / "s.tif") as src:
        assert src.count == 3 and src.crs == crs and src.transform == transform


@needs_landsat
def test_landsat_quality_band_is_refused(cli, tmp_path: Path) -> None:
    out = tmp_path / "l8.zarr"
    r = cli("ingest", "--stack", "bands", str(LANDSAT / "*.tif"), "-o", str(out))
    assert r.returncode == 2
    assert "l8_BQA.tif" in r.stderr and "quality" in r.stderr and "_B[0-9]*" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def _bands(folder: Path, n: int, *, shape=(5, 6), dtype="uint16", name="band") -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{name}_{i + 1}.tif"
        tifffile.imwrite(p, (np.arange(np.prod(shape)).reshape(shape) * (i + 1)).astype(dtype))
        paths.append(p)
    return paths


def test_wavelengths_option_and_natural_order(cli, tmp_path: Path) -> None:
    paths = _bands(tmp_path / "d", 11, dtype="int16")
    out = tmp_path / "s.zarr"
    wl = ",".join(str(400 + 10 * i) for i in range(11))
    r = cli(
        "-q", "ingest", "--stack", "bands", str(tmp_path / "d"), "--wavelengths", wl, "-o", str(out)
    )
    assert r.returncode == 0, r.stderr
    ds = xr.open_zarr(out)
    ref = np.stack([tifffile.imread(p) for p in paths])  # band_1 ... band_11, as numbered
    np.testing.assert_array_equal(ds["cube"].values, ref.astype(np.float32))
    np.testing.assert_array_equal(ds["wavelength"].values, 400 + 10 * np.arange(11.0))
    assert list(open_cube(out)["band_name"].values) == [p.stem for p in paths]


def test_files_named_one_by_one_keep_their_order(cli, tmp_path: Path) -> None:
    paths = _bands(tmp_path / "d", 3)
    out = tmp_path / "s.zarr"
    order = [paths[2], paths[0], paths[1]]
    r = cli("-q", "ingest", "--stack", "bands", *map(str, order), "-o", str(out))
    assert r.returncode == 0, r.stderr
    ref = np.stack([tifffile.imread(p) for p in order]).astype(np.float32)
    np.testing.assert_array_equal(xr.open_zarr(out)["cube"].values, ref)
    assert "wavelength" not in xr.open_zarr(out).coords


def test_what_cannot_be_one_cube_is_one_line_exit_2(cli, tmp_path: Path) -> None:
    good = _bands(tmp_path / "g", 2)
    (tmp_path / "x").mkdir()
    small = tmp_path / "x" / "small.tif"
    tifffile.imwrite(small, np.zeros((4, 6), np.uint16))
    floats = tmp_path / "x" / "floats.tif"
    tifffile.imwrite(floats, np.zeros((5, 6), np.float32))
    rgb = tmp_path / "x" / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((5, 6, 3), np.uint8), photometric="rgb")
    cases = [
        ([*good, small], "small.tif", "size and dtype"),
        ([*good, floats], "floats.tif", "size and dtype"),
        ([*good, rgb], "rgb.tif", "single-band"),
        ([*good, "--wavelengths", "400,500,600"], "3 value(s) for 2", "wavelength"),
        ([*good, "--wavelengths", "400,blue"], "400,blue", "wavelengths"),
    ]
    for args, name, said in cases:
        out = tmp_path / "o.zarr"
        r = cli("ingest", "--stack", "bands", *map(str, args), "-o", str(out))
        assert r.returncode == 2, (args, r.stderr)
        assert name in r.stderr and said in r.stderr, r.stderr
        assert not out.exists()
    r = cli("ingest", str(good[0]), "--wavelengths", "400", "-o", str(tmp_path / "o.zarr"))
    assert r.returncode == 2 and "--stack bands" in r.stderr


def test_bands_on_different_grids_are_refused(cli, tmp_path: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    from_origin = pytest.importorskip("rasterio.transform").from_origin
    paths = []
    for i, west in enumerate((500000.0, 500030.0)):
        p = tmp_path / f"g{i}.tif"
        profile = {"driver": "GTiff", "width": 6, "height": 5, "count": 1, "dtype": "float32"}
        with rasterio.open(
            p, "w", crs="EPSG:32633", transform=from_origin(west, 4e6, 30, 30), **profile
        ) as dst:
            dst.write(np.full((1, 5, 6), -1.0 * i, np.float32))
        paths.append(p)
    out = tmp_path / "o.zarr"
    r = cli("ingest", "--stack", "bands", *map(str, paths), "-o", str(out))
    assert r.returncode == 2 and "g1.tif" in r.stderr and "grid" in r.stderr
    assert not out.exists()
