"""The users' first question, end to end: signed floats go in (NPY, float TIFF), live in a
store, come out (float TIFF, NPY) and read back bit-identical through tifffile, Pillow
and OpenCV. Property-tested over shapes, dtypes and chunkings."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from cubepipe.storage import open_cube
from cubepipe.storage.export import export
from cubepipe.storage.ingest import ingest

from .conftest import signed_float_block

_counter = iter(range(10**9))


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@given(
    bands=st.integers(1, 3),
    ny=st.integers(1, 33),
    nx=st.integers(1, 33),
    dtype=st.sampled_from([np.float32, np.float64]),
    cy=st.integers(1, 16),
    cx=st.integers(1, 16),
    via=st.sampled_from(["npy", "tif"]),
    seed=st.integers(0, 2**16),
)
def test_ingest_store_export_is_bit_identical(
    tmp_path: Path, bands, ny, nx, dtype, cy, cx, via, seed
) -> None:
    work = tmp_path / f"case{next(_counter)}"
    work.mkdir()
    data = signed_float_block((bands, ny, nx), seed=seed).astype(dtype)
    if dtype == np.float64:
        data[..., 0] = np.float64(-1e300)  # beyond float32: must survive as float64
    src = work / f"in.{via}"
    if via == "npy":
        np.save(src, data)
    else:
        # One page per band, as multi-band float TIFFs from GDAL/ENVI/MATLAB are laid out.
        with tifffile.TiffWriter(src) as tw:
            for plane in data:
                tw.write(plane, photometric="minisblack", metadata=None)
    # Tiny NPY shapes are ambiguous ((1, 1, 2) could be y, x, band): say the layout.
    layout = "byx" if via == "npy" else None
    store = ingest(src, work / "cube.zarr", chunks={"y": cy, "x": cx}, layout=layout)
    cube = open_cube(store)["cube"]
    assert cube.dims == ("band", "y", "x")
    _same_bits(cube.values, data)

    export(store, work / "out.npy")
    _same_bits(np.load(work / "out.npy", allow_pickle=False), data)

    export(store, work / "out.tif")
    with tifffile.TiffFile(work / "out.tif") as tif:
        assert len(tif.pages) == bands
        back = tif.asarray()
    _same_bits(back.reshape(data.shape), data)

    ok, pages = cv2.imreadmulti(str(work / "out.tif"), flags=cv2.IMREAD_UNCHANGED)
    assert ok
    _same_bits(np.stack(pages).reshape(data.shape), data)
    if dtype == np.float32:
        export(store, work / "band0.tif", bands=[0])
        with Image.open(work / "band0.tif") as im:
            assert im.mode == "F"
            _same_bits(np.asarray(im, dtype=np.float32), data[0])
        _same_bits(
            cv2.imread(str(work / "band0.tif"), cv2.IMREAD_UNCHANGED).reshape(ny, nx), data[0]
        )


def test_the_users_case_negative_floats_survive_where_png_would_zero_them(
    tmp_path: Path, cli
) -> None:
    """cv2.imwrite/PIL turn negative floats into 0 in 8-bit images; cubepipe refuses that
    without an explicit scale and keeps them exact in float TIFF."""
    z = np.array([[[-1.5, -0.25, 0.0, 2.75]]], dtype=np.float32)  # standardized pixels
    np.save(tmp_path / "z.npy", z)
    assert cli("ingest", str(tmp_path / "z.npy"), "-o", str(tmp_path / "z.zarr")).returncode == 0
    refused = cli("export", str(tmp_path / "z.zarr"), "-o", str(tmp_path / "z.png"))
    assert refused.returncode == 2
    assert "negative" in refused.stderr and "--scale" in refused.stderr
    assert not (tmp_path / "z.png").exists()
    ok = cli("export", str(tmp_path / "z.zarr"), "-o", str(tmp_path / "z.tif"))
    assert ok.returncode == 0, ok.stderr
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "z.tif").reshape(z.shape), z)
