"""open_input (dtype policy, nodata, sidecars, collections) and ingest into stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cubepipe.storage import (
    FormatError,
    InputError,
    StoreNotFoundError,
    history,
    open_cube,
    store_state,
)
from cubepipe.storage.ingest import ingest, open_input
from cubepipe.storage.sidecar import write_sidecar

DATA = Path(__file__).parents[1] / "data"
SHARED = Path(__file__).parents[3] / "shared" / "data"
INDIAN_PINES = SHARED / "indian_pines" / "Indian_pines_corrected.npy"


def _npy(path: Path, a: np.ndarray) -> Path:
    np.save(path, a)
    return path


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("uint8", "float32"),
        ("int8", "float32"),
        ("uint16", "float32"),
        ("int16", "float32"),
        ("bool", "float32"),
        ("float16", "float32"),
        ("float32", "float32"),
        ("float64", "float64"),
    ],
)
def test_dtype_policy(tmp_path: Path, dtype: str, expected: str) -> None:
    a = (np.arange(2 * 5 * 6) % 7 - (3 if dtype[0] in "if" else 0)).astype(dtype).reshape(2, 5, 6)
    ds = open_input(_npy(tmp_path / "a.npy", a))
    assert ds["cube"].dtype == np.dtype(expected)
    assert ds["cube"].attrs["cubepipe_source_dtype"] == dtype
    np.testing.assert_array_equal(ds["cube"].values, a.astype(expected))


def test_wide_integers_need_an_explicit_dtype(tmp_path: Path) -> None:
    a = np.array([[[2**24 + 1, -5]]], dtype="int32")
    path = _npy(tmp_path / "wide.npy", a)
    with pytest.raises(InputError, match=r"wide.npy: int32 .*dtype='float64'"):
        open_input(path)
    ds = open_input(path, dtype="float64")
    assert ds["cube"].dtype == np.float64 and ds["cube"].values[0, 0, 0] == 2**24 + 1
    assert open_input(_npy(tmp_path / "b.npy", np.ones((2, 3), "u1")), dtype="float64")[
        "cube"
    ].dtype == np.dtype("float64")
    with pytest.raises(InputError, match="float32 or float64"):
        open_input(path, dtype="int16")


def test_nodata_becomes_nan_and_mask(tmp_path: Path) -> None:
    a = np.arange(3 * 4 * 5, dtype="int16").reshape(3, 4, 5)
    a[1, 2, 3] = -9999
    a[:, 0, 0] = -9999
    tifffile.imwrite(
        tmp_path / "n.tif",
        a,
        photometric="minisblack",
        extratags=[(42113, "s", 0, "-9999", True)],
    )
    ds = open_input(tmp_path / "n.tif", chunks={"y": 2})
    cube, mask = ds["cube"].values, ds["mask"]
    assert mask.dims == ("y", "x") and mask.dtype == bool
    assert np.isnan(cube[1, 2, 3]) and np.isnan(cube[:, 0, 0]).all()
    assert np.isnan(cube).sum() == 4
    expected = np.ones((4, 5), bool)
    expected[2, 3] = expected[0, 0] = False
    np.testing.assert_array_equal(mask.values, expected)
    assert ds["cube"].attrs["source_nodata"] == -9999.0


def test_sidecar_restores_floats(tmp_path: Path) -> None:
    q = np.array([[0, 1000, 65535], [30000, 2, 65534]], dtype="uint16")
    Image.fromarray(q).save(tmp_path / "band.png")
    write_sidecar(
        tmp_path / "band.png", scale=0.001, offset=-5.0, max_abs_error=0.0005, bits=16,
        nan_value=65535,
    )  # fmt: skip
    ds = open_input(tmp_path / "band.png")
    cube = ds["cube"]
    assert cube.dtype == np.float32
    assert cube.attrs["cubepipe_encoding"] == "sidecar"
    assert cube.attrs["max_abs_error"] == 0.0005
    expected = (q * 0.001 - 5.0).astype("float32")
    expected[0, 2] = np.nan
    np.testing.assert_array_equal(cube.values[0], expected)
    write_sidecar(tmp_path / "band.png", scale=1.0, offset=0.0, max_abs_error=0.0, bits=8)
    with pytest.raises(FormatError, match="describes 8-bit integers but .*band.png holds uint16"):
        open_input(tmp_path / "band.png")


def test_per_band_sidecar_scales(tmp_path: Path) -> None:
    q = np.full((4, 6, 3), 10, dtype="uint8")
    Image.fromarray(q).save(tmp_path / "rgb.png")
    write_sidecar(
        tmp_path / "rgb.png", scale=[1.0, 2.0, 0.5], offset=[0.0, -1.0, 1.0],
        max_abs_error=0.25, bits=8,
    )  # fmt: skip
    v = open_input(tmp_path / "rgb.png")["cube"].values
    assert v[:, 0, 0].tolist() == [10.0, 19.0, 6.0]


def test_collections_and_laziness(tmp_path: Path, no_compute) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    stack = np.random.default_rng(1).integers(0, 2**16, (3, 2, 40, 30)).astype("uint16")
    for i, a in enumerate(stack):
        tifffile.imwrite(folder / f"s{i}.tif", a, photometric="minisblack")
    with no_compute:
        ds = open_input(folder, chunks={"y": 16})
        by_glob = open_input(str(folder / "s*.tif"))
    assert ds["cube"].dims == ("image", "band", "y", "x")
    assert ds["cube"].data.chunks[:3] == ((1, 1, 1), (2,), (16, 16, 8))
    assert list(ds["source"].values) == ["s0.tif", "s1.tif", "s2.tif"]
    np.testing.assert_array_equal(ds["cube"].values, stack.astype("float32"))
    assert by_glob["cube"].shape == (3, 2, 40, 30)
    layers = ds["cube"].data.__dask_graph__().layers
    assert any(n.startswith("cubepipe-ingest-read-tiff") for n in layers)
    assert any(n.startswith("cubepipe-ingest-cast") for n in layers)


def test_missing_and_unknown_inputs(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="nope.npy"):
        open_input(tmp_path / "nope.npy")
    (tmp_path / "r.xyz").write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(FormatError, match=r"r.xyz: unknown format"):
        open_input(tmp_path / "r.xyz")
    Image.fromarray(np.zeros((3, 3), "u1")).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="a.png: layout= .* .npy files only"):
        open_input(tmp_path / "a.png", layout="yxb")
    with pytest.raises(FormatError, match="a.png: not a readable JPEG image"):
        open_input(tmp_path / "a.png", format="jpeg")
    with pytest.raises(InputError, match="unknown --format 'gif'"):
        open_input(tmp_path / "a.png", format="gif")


def test_ingest_writes_a_complete_store_with_provenance(tmp_path: Path) -> None:
    a = np.random.default_rng(2).normal(size=(3, 50, 40)).astype("float32")
    out = ingest(_npy(tmp_path / "a.npy", a), tmp_path / "a.zarr", chunks={"y": 32, "x": 32})
    assert store_state(out) == "complete"
    ds = open_cube(out)
    assert ds["cube"].encoding["chunks"] == (3, 32, 32)
    np.testing.assert_array_equal(ds["cube"].values, a)
    entry = history(ds)[-1]
    assert entry["op"] == "ingest" and entry["inputs"] == [str(tmp_path / "a.npy")]
    assert entry["params"]["encoding"] == "float32" and entry["params"]["chunks"] == {
        "y": 32,
        "x": 32,
    }
    same = {"chunks": {"y": 32, "x": 32}}
    assert ingest(tmp_path / "a.npy", tmp_path / "a.zarr", resume=True, **same) == out  # no-op
    with pytest.raises(InputError, match="chunks"):  # not what made it: refused, not skipped
        ingest(tmp_path / "a.npy", tmp_path / "a.zarr", resume=True)
    half = ingest(tmp_path / "a.npy", tmp_path / "h.zarr", encoding="float16")
    assert open_cube(half)["cube"].attrs["cubepipe_encoding"] == "float16"


def test_ingest_real_png(tmp_path: Path) -> None:
    out = ingest(DATA / "images" / "camera.png", tmp_path / "cam.zarr")
    cube = open_cube(out)["cube"]
    assert cube.dtype == np.float32 and cube.shape == (1, 512, 512)
    with Image.open(DATA / "images" / "camera.png") as im:  # the reference: Pillow
        ref = np.asarray(im.convert("L"), dtype=np.float32)
    np.testing.assert_array_equal(cube.values[0], ref)
    assert list(open_cube(out)["band_name"].values) == ["grey"]


@pytest.mark.skipif(not INDIAN_PINES.exists(), reason=f"real data not present: {INDIAN_PINES}")
def test_ingest_real_indian_pines(tmp_path: Path) -> None:
    out = ingest(INDIAN_PINES, tmp_path / "ip.zarr", chunks={"y": 64, "x": 64})
    cube = open_cube(out)["cube"]
    assert cube.shape == (200, 145, 145) and cube.dtype == np.float32
    assert cube.attrs["cubepipe_source_dtype"] == "uint16"
    v = cube.values
    assert (v.min(), v.max()) == (955.0, 9604.0)
    assert v.astype(np.float64).mean() == pytest.approx(2652.389, abs=1e-3)


def test_a_block_failing_mid_write_leaves_the_store_incomplete(tmp_path: Path) -> None:
    a = np.random.default_rng(3).normal(size=(1, 64, 64)).astype("float32")
    tifffile.imwrite(tmp_path / "t.tif", a, compression="zlib", tile=(32, 32))
    with tifffile.TiffFile(tmp_path / "t.tif") as tif:
        offset, count = tif.pages[0].dataoffsets[-1], tif.pages[0].databytecounts[-1]
    with (tmp_path / "t.tif").open("r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * count)
    with pytest.raises(FormatError, match="t.tif: reading a block"):
        ingest(tmp_path / "t.tif", tmp_path / "t.zarr", chunks={"y": 32, "x": 32})
    assert store_state(tmp_path / "t.zarr") == "incomplete"
