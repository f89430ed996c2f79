"""``cubepipe export`` and ``cubepipe info`` through the real console script."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import xarray as xr
from PIL import Image

from cubepipe.storage import write_cube
from cubepipe.storage.encodings import encode
from cubepipe.storage.sidecar import read_sidecar

from ..conftest import signed_float_block


@pytest.fixture
def store(tmp_path: Path) -> Path:
    data = signed_float_block((4, 24, 30), seed=11)
    data[np.isinf(data) | (np.abs(data) > 1e30)] = -7.5
    ds = xr.Dataset({"cube": (("band", "y", "x"), da.from_array(data, chunks=(4, 16, 16)))})
    return write_cube(ds, tmp_path / "s.zarr")


def _data(store: Path) -> np.ndarray:
    return xr.open_zarr(store)["cube"].values


def test_png_without_scale_exits_2_with_one_line(cli, store: Path, tmp_path: Path) -> None:
    r = cli("export", str(store), "-o", str(tmp_path / "o.png"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    msg = lines[0]
    assert msg.startswith("cubepipe: error:")
    for part in ("non-negative integers", "negative and fractional", "--scale minmax", ".tif/.npy"):
        assert part in msg
    assert not any(p.suffix == ".png" for p in tmp_path.iterdir())


def test_png_with_minmax_writes_image_and_sidecar(cli, store: Path, tmp_path: Path) -> None:
    out = tmp_path / "band1.png"
    r = cli("export", str(store), "-o", str(out), "--bands", "1", "--scale", "minmax")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1 and "0 value(s) clipped" in r.stdout
    side = read_sidecar(out)
    assert side is not None and side["bits"] == 8 and side["nan_value"] == 0
    with Image.open(out) as im:
        assert im.mode == "L"
        q = np.asarray(im).astype(np.float64)
    original = _data(store)[1].astype(np.float64)
    assert np.array_equal(q == 0, np.isnan(original))
    restored = q * side["scale"] + side["offset"]
    valid = ~np.isnan(original)
    assert np.abs(restored[valid] - original[valid]).max() <= side["max_abs_error"]


def test_rgb_preview_and_clip_warning(cli, store: Path, tmp_path: Path) -> None:
    out = tmp_path / "rgb.jpg"
    args = ("--bands", "2,1,0", "--scale", "percentile:2,98")
    r = cli("-q", "export", str(store), "-o", str(out), *args)
    assert r.returncode == 0, r.stderr
    assert "RGB preview" in r.stdout
    assert "clipped" in r.stderr and r.stderr.startswith("cubepipe: warning:")
    with Image.open(out) as im:
        assert im.mode == "RGB"
    assert read_sidecar(out)["clipped"] > 0


def test_tif_export_is_bit_exact_and_refuses_to_overwrite(cli, store: Path, tmp_path: Path) -> None:
    out = tmp_path / "all.tif"
    r = cli("export", str(store), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "float32" in r.stdout and "bit-exact" in r.stdout
    data = _data(store)
    assert np.array_equal(tifffile.imread(out).view(np.uint32), data.view(np.uint32))
    again = cli("export", str(store), "-o", str(out), "--bands", "0,9")
    assert again.returncode == 2 and "0..3" in again.stderr
    again = cli("export", str(store), "-o", str(out))
    assert again.returncode == 2
    assert len(again.stderr.strip().splitlines()) == 1 and "--overwrite" in again.stderr
    assert cli("-q", "export", str(store), "-o", str(out), "--overwrite").returncode == 0


def test_info_shows_encoding_and_error_bound(cli, store: Path, tmp_path: Path) -> None:
    encoded = write_cube(encode(xr.open_zarr(store), "int16-quantized"), tmp_path / "q.zarr")
    r = cli("info", str(encoded))
    assert r.returncode == 0, r.stderr
    assert "cubepipe_encoding = int16-quantized" in r.stdout
    bound = xr.open_zarr(encoded)["cube"].attrs["max_abs_error"]
    assert f"max_abs_error = {bound}" in r.stdout
