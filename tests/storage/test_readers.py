"""The npy, TIFF and PNG/JPEG readers and image collections (storage/readers/*.py)."""

from __future__ import annotations

import os
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import xarray as xr
from PIL import Image

from cubepipe.storage import FormatError, InputError
from cubepipe.storage.readers import detect_format, open_source
from cubepipe.storage.readers.collection import check_same, expand_sources, stack_images
from cubepipe.storage.readers.npy import default_layout, open_npy
from cubepipe.storage.sidecar import write_sidecar

DATA = Path(__file__).parents[1] / "data"
SHARED = Path(__file__).parents[3] / "shared" / "data"
INDIAN_PINES = SHARED / "indian_pines" / "Indian_pines_corrected.npy"
DTYPES = ["float32", "float64", "int16", "uint16", "uint8"]


def _values(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 1000, size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def _layers(ds: xr.Dataset) -> list[str]:
    return list(ds["cube"].data.__dask_graph__().layers)


def _assert_cube(ds: xr.Dataset, expected: np.ndarray) -> None:
    cube = ds["cube"]
    assert cube.dims == ("band", "y", "x")
    assert isinstance(cube.data, da.Array)
    assert cube.dtype == expected.dtype
    assert all(name.startswith("cubepipe-ingest") for name in _layers(ds))
    np.testing.assert_array_equal(cube.values, expected)


# -- npy -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_npy_band_y_x_in_native_dtype_with_requested_chunks(tmp_path: Path, dtype: str) -> None:
    a = _values((4, 30, 50), dtype)
    np.save(tmp_path / "a.npy", a)
    ds = open_source(tmp_path / "a.npy", chunks={"y": 16, "x": 32})
    assert ds["cube"].data.chunks == ((4,), (16, 14), (32, 18))
    assert ds["cube"].attrs["source_layout"] == "byx"
    _assert_cube(ds, a)


def test_npy_2d_fortran_big_endian_and_4d(tmp_path: Path) -> None:
    a = _values((20, 30), "float32")
    np.save(tmp_path / "f.npy", np.asfortranarray(a).astype(">f4"))
    _assert_cube(open_source(tmp_path / "f.npy"), a[np.newaxis])
    stack = _values((2, 3, 10, 12), "int16")
    np.save(tmp_path / "s.npy", stack)
    ds = open_source(tmp_path / "s.npy")
    assert ds["cube"].dims == ("image", "band", "y", "x")
    np.testing.assert_array_equal(ds["cube"].values, stack)


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((15, 250, 250), "byx"),
        ((145, 145, 200), "yxb"),
        ((512, 640, 3), "yxb"),
        ((200, 145, 145), "byx"),
        ((610, 340, 103), "yxb"),
        ((100, 200, 300), "byx"),
        ((20, 30), "yx"),
        ((5, 64, 48, 3), "iyxb"),
    ],
)
def test_npy_default_layout_rule(shape: tuple[int, ...], layout: str) -> None:
    assert default_layout(shape) == layout


def test_npy_layout_override(tmp_path: Path) -> None:
    a = _values((6, 8, 5), "uint16")  # rule says (band=6, y, x); the file is really y, x, b
    np.save(tmp_path / "a.npy", a)
    ds = open_npy(tmp_path / "a.npy", layout="yxb")
    _assert_cube(ds, a.transpose(2, 0, 1))
    assert ds["cube"].attrs["source_layout"] == "yxb"
    with pytest.raises(InputError, match="layout 'yxq'"):
        open_npy(tmp_path / "a.npy", layout="yxq")


@pytest.mark.skipif(not INDIAN_PINES.exists(), reason=f"real data not present: {INDIAN_PINES}")
def test_npy_real_fortran_ordered_indian_pines() -> None:
    ds = open_source(INDIAN_PINES, chunks={"y": 64, "x": 64})
    cube = ds["cube"]
    assert cube.shape == (200, 145, 145) and cube.dtype == np.uint16
    assert cube.attrs["source_layout"] == "yxb"
    v = cube.values
    assert (v.min(), v.max()) == (955, 9604)
    assert v.mean() == pytest.approx(2652.389, abs=1e-3)
    assert v[0].mean() == pytest.approx(2957.3635, abs=1e-4)  # band 0, SOURCES.md
    raw = np.load(INDIAN_PINES, mmap_mode="r")
    assert raw.flags.f_contiguous
    np.testing.assert_array_equal(v[:, 100, 7], raw[100, 7, :])


def test_npy_refuses_objects_structured_truncated_and_1d(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object))  # pickles
    with pytest.raises(FormatError, match="obj.npy.*Python objects.*never unpickles"):
        open_source(tmp_path / "obj.npy")
    np.save(tmp_path / "rec.npy", np.zeros((3, 4), dtype=[("a", "f4"), ("b", "i2")]))
    with pytest.raises(FormatError, match="rec.npy: structured dtype"):
        open_source(tmp_path / "rec.npy")
    np.save(tmp_path / "cut.npy", np.zeros((3, 40, 40), "f4"))
    data = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="cut.npy: the file is truncated"):
        open_source(tmp_path / "cut.npy")
    np.save(tmp_path / "line.npy", np.zeros(10))
    with pytest.raises(FormatError, match="line.npy: array of shape"):
        open_source(tmp_path / "line.npy")


# -- TIFF ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiff_multipage_pages_become_bands(tmp_path: Path, dtype: str) -> None:
    a = _values((5, 40, 30), dtype)
    tifffile.imwrite(tmp_path / "p.tif", a)
    ds = open_source(tmp_path / "p.tif", chunks={"y": 16})
    assert ds.attrs["format"] == "tiff"
    assert ds["cube"].data.chunks == ((5,), (16, 16, 8), (30,))
    _assert_cube(ds, a)


@pytest.mark.parametrize(
    "options",
    [
        {"bigtiff": True},
        {"compression": "zlib", "rowsperstrip": 7},
        {"compression": "zlib", "tile": (16, 16)},
        {"byteorder": ">"},
    ],
    ids=["bigtiff", "deflate-strips", "deflate-tiles", "big-endian"],
)
def test_tiff_variants_read_per_block(tmp_path: Path, options: dict) -> None:
    a = _values((3, 50, 40), "float32")
    tifffile.imwrite(tmp_path / "v.tif", a, photometric="minisblack", **options)
    ds = open_source(tmp_path / "v.tif", chunks={"y": 32, "x": 32, "band": 2})
    assert ds["cube"].data.numblocks == (2, 2, 2)
    _assert_cube(ds, a)
    np.testing.assert_array_equal(ds["cube"].data.blocks[1, 1, 0].compute(), a[2:, 32:, :32])


def test_tiff_lzw_needs_imagecodecs(tmp_path: Path) -> None:
    pytest.importorskip("imagecodecs", reason="LZW-compressed TIFF needs imagecodecs")
    a = _values((2, 20, 30), "uint16")
    tifffile.imwrite(tmp_path / "lzw.tif", a, compression="lzw")
    _assert_cube(open_source(tmp_path / "lzw.tif"), a)


def test_tiff_multisample_rgb_contiguous_and_planar(tmp_path: Path) -> None:
    rgb = _values((20, 30, 3), "uint8")
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    ds = open_source(tmp_path / "rgb.tif", chunks={"y": 8})
    _assert_cube(ds, rgb.transpose(2, 0, 1))
    assert list(ds["band_name"].values) == ["R", "G", "B"]
    planar = _values((4, 20, 30), "int16")
    tifffile.imwrite(
        tmp_path / "planar.tif", planar, photometric="minisblack", planarconfig="separate"
    )
    _assert_cube(open_source(tmp_path / "planar.tif"), planar)


@pytest.mark.parametrize("planar", ["contig", "separate"])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_pages_of_multisample_images_flatten_into_bands(
    tmp_path: Path, compression: str | None, planar: str
) -> None:
    a = _values((2, 10, 12, 3), "uint16")  # 2 pages of RGB
    data = a if planar == "contig" else a.transpose(0, 3, 1, 2)
    tifffile.imwrite(
        tmp_path / "m.tif",
        data,
        photometric="rgb",
        planarconfig=planar,
        compression=compression,
        rowsperstrip=4,
        metadata=None,  # no shape metadata: pages are a plain sequence
    )
    ds = open_source(tmp_path / "m.tif", chunks={"band": 4, "y": 8})
    assert ds["cube"].data.chunks[:2] == ((4, 2), (8, 2))
    _assert_cube(ds, a.transpose(0, 3, 1, 2).reshape(6, 10, 12))


def test_tiff_gdal_nodata_tag_is_reported(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "n.tif", np.zeros((4, 4), "int16"), extratags=[(42113, "s", 0, "-9999", True)]
    )
    assert open_source(tmp_path / "n.tif")["cube"].attrs["nodata"] == -9999.0


def test_tiff_real_landsat_band() -> None:
    ds = open_source(DATA / "landsat8" / "l8_B4.tif")
    cube = ds["cube"]
    assert cube.shape == (1, 603, 627) and cube.dtype == np.uint16
    v = cube.values
    assert (v.min(), v.max()) == (5941, 23082)
    assert v.mean() == pytest.approx(8251.708, abs=1e-3)


def test_tiff_truncated_and_garbage_fail_at_open(tmp_path: Path) -> None:
    data = (DATA / "landsat8" / "l8_B4.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match=r"cut.tif: truncated or damaged TIFF: .*beyond the end"):
        open_source(tmp_path / "cut.tif")
    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((5, 40, 40), "f4"))
    data = (tmp_path / "pages.tif").read_bytes()
    (tmp_path / "pages.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="pages.tif: damaged or truncated TIFF"):
        open_source(tmp_path / "pages.tif")
    (tmp_path / "junk.tif").write_bytes(np.random.default_rng(0).bytes(2000))
    assert detect_format(tmp_path / "junk.tif").name == "tiff"  # by suffix: content fails
    with pytest.raises(FormatError, match="junk.tif: not a TIFF file"):
        open_source(tmp_path / "junk.tif")


def test_tiff_block_errors_name_the_file_and_other_blocks_still_read(tmp_path: Path) -> None:
    a = _values((1, 64, 64), "float32")
    tifffile.imwrite(tmp_path / "t.tif", a, compression="zlib", tile=(32, 32))
    ds = open_source(tmp_path / "t.tif", chunks={"y": 32, "x": 32})
    with tifffile.TiffFile(tmp_path / "t.tif") as tif:
        offset, count = tif.pages[0].dataoffsets[-1], tif.pages[0].databytecounts[-1]
    with (tmp_path / "t.tif").open("r+b") as fh:  # scramble the last tile, in place
        fh.seek(offset)
        fh.write(b"\x00" * count)
    np.testing.assert_array_equal(ds["cube"].data.blocks[0, 0, 0].compute(), a[:, :32, :32])
    with pytest.raises(FormatError, match=r"t.tif: reading a block of the TIFF file failed"):
        ds["cube"].data.blocks[0, 1, 1].compute()


# -- PNG / JPEG ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dtype", "names"),
    [
        ((20, 30), "uint8", ["grey"]),
        ((20, 30, 3), "uint8", ["R", "G", "B"]),
        ((20, 30, 4), "uint8", ["R", "G", "B", "A"]),
        ((20, 30), "uint16", ["grey"]),
    ],
)
def test_png_pillow_modes(tmp_path: Path, shape: tuple, dtype: str, names: list[str]) -> None:
    a = _values(shape, dtype)
    Image.fromarray(a).save(tmp_path / "i.png")
    ds = open_source(tmp_path / "i.png", chunks={"y": 8})
    expected = a[np.newaxis] if a.ndim == 2 else a.transpose(2, 0, 1)
    _assert_cube(ds, expected)
    assert list(ds["band_name"].values) == names
    assert ds["cube"].data.numblocks == (1, 1, 1)  # PNG cannot be read partially


@pytest.mark.parametrize("channels", [3, 4])
def test_png_16bit_colour(tmp_path: Path, channels: int) -> None:
    imagecodecs = pytest.importorskip("imagecodecs", reason="16-bit colour PNG needs imagecodecs")
    a = _values((12, 17, channels), "uint16")
    (tmp_path / "c.png").write_bytes(imagecodecs.png_encode(a))
    ds = open_source(tmp_path / "c.png")
    _assert_cube(ds, a.transpose(2, 0, 1))
    assert ds["band_name"].size == channels


def test_png_palette_bilevel_and_grey_alpha(tmp_path: Path) -> None:
    index = np.zeros((6, 8), "uint8")
    index[:, 4:] = 1
    palette = Image.fromarray(index, mode="P")
    palette.putpalette([0, 0, 0, 200, 10, 30])
    palette.save(tmp_path / "p.png")
    rgb = np.array([[0, 0, 0], [200, 10, 30]], "uint8")[index]
    _assert_cube(open_source(tmp_path / "p.png"), rgb.transpose(2, 0, 1))
    bits = np.eye(5, dtype=bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    _assert_cube(open_source(tmp_path / "b.png"), bits.astype("uint8")[np.newaxis])
    la = _values((6, 8, 2), "uint8")
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    ds = open_source(tmp_path / "la.png")
    _assert_cube(ds, la.transpose(2, 0, 1))
    assert list(ds["band_name"].values) == ["grey", "A"]


def test_real_png_and_jpeg() -> None:
    cam = open_source(DATA / "images" / "camera.png")["cube"].values
    assert cam.shape == (1, 512, 512) and cam.dtype == np.uint8
    with Image.open(DATA / "images" / "camera.png") as im:  # the reference: Pillow
        assert im.mode == "L"
        np.testing.assert_array_equal(cam[0], np.asarray(im))
    ds = open_source(DATA / "images" / "rocket.jpg")
    assert ds.attrs["format"] == "jpeg" and list(ds["band_name"].values) == ["R", "G", "B"]
    rocket = ds["cube"].values
    assert rocket.shape == (3, 427, 640) and rocket.dtype == np.uint8
    assert rocket.mean() == pytest.approx(65.277, abs=0.5)  # JPEG decoders differ slightly
    assert rocket[2].mean() > rocket[0].mean()  # a blue sky


def test_detection_by_content_wins_over_suffix(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4), "uint8")).save(tmp_path / "x.png")
    os.rename(tmp_path / "x.png", tmp_path / "x.dat")
    assert detect_format(tmp_path / "x.dat").name == "png"
    tifffile.imwrite(tmp_path / "t.bin", np.zeros((4, 4), "uint8"))
    assert detect_format(tmp_path / "t.bin").name == "tiff"
    np.save(tmp_path / "n.npy", np.zeros((4, 4)))
    os.rename(tmp_path / "n.npy", tmp_path / "n.png")
    assert detect_format(tmp_path / "n.png").name == "npy"


def test_png_truncated_or_garbage_fails_at_open(tmp_path: Path) -> None:
    data = (DATA / "images" / "camera.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="cut.png: truncated PNG"):
        open_source(tmp_path / "cut.png")
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg at all" * 10)
    with pytest.raises(FormatError, match="junk.jpg: not a readable JPEG image"):
        open_source(tmp_path / "junk.jpg")


# -- laziness ------------------------------------------------------------------------------


def test_opening_reads_no_pixels(tmp_path: Path, no_compute) -> None:
    tifffile.imwrite(tmp_path / "a.tif", np.ones((2, 64, 64), "f4"), compression="zlib")
    np.save(tmp_path / "a.npy", np.ones((2, 64, 64), "u2"))
    Image.fromarray(np.ones((64, 64, 3), "u1")).save(tmp_path / "a.png")
    with no_compute:
        for name in ("a.tif", "a.npy", "a.png"):
            ds = open_source(tmp_path / name, chunks={"y": 32})
            assert all(n.startswith("cubepipe-ingest-read-") for n in _layers(ds))
        with pytest.raises(AssertionError, match="dask computation ran"):
            ds["cube"].values  # noqa: B018  (the guard itself works)


# -- collections ---------------------------------------------------------------------------


def _pngs(folder: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    folder.mkdir(exist_ok=True)
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        out[name] = _values(shape, "uint8", seed=i)
        Image.fromarray(out[name]).save(folder / name)
    return out


def test_expand_sources_directory_glob_and_lists(tmp_path: Path) -> None:
    images = _pngs(tmp_path / "d", {"b.png": (4, 5), "a.png": (4, 5)})
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    (tmp_path / "d" / ".hidden.png").write_bytes(b"")
    write_sidecar(tmp_path / "d" / "a.png", scale=1.0, offset=0.0, max_abs_error=0.0, bits=8)
    d = tmp_path / "d"
    assert expand_sources(d) == ([d / "a.png", d / "b.png"], True)
    assert expand_sources(str(d / "*.png")) == ([d / "a.png", d / "b.png"], True)
    assert expand_sources([d / "b.png", d / "a.png", d / "b.png"]) == (
        [d / "b.png", d / "a.png"],
        True,
    )
    assert expand_sources(d / "a.png") == ([d / "a.png"], False)
    assert sorted(images) == ["a.png", "b.png"]
    (d / "scan.hdr").write_text("ENVI\n")
    (d / "scan.raw").write_bytes(b"\x00" * 8)
    assert d / "scan.raw" not in expand_sources(d)[0]  # the ENVI pair is one input
    with pytest.raises(InputError, match="no file matches"):
        expand_sources(str(tmp_path / "*.tif"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no file any reader recognises"):
        expand_sources(tmp_path / "empty")


def test_stack_images_and_mixed_shapes(tmp_path: Path) -> None:
    images = _pngs(
        tmp_path / "d",
        {"a.png": (6, 7, 3), "b.png": (6, 7, 3), "c.png": (6, 8), "d.png": (6, 8, 3)},
    )
    paths = [tmp_path / "d" / n for n in sorted(images)]
    datasets = [open_source(p) for p in paths]
    # sizes may differ (padded: tests/storage/test_image_dataset.py), band counts may not
    with pytest.raises(
        FormatError,
        match=r"c\.png: image is \(band=1, y=6, x=8\) uint8 but the first file .*a\.png.*--color",
    ):
        check_same(datasets, paths)
    stacked = stack_images(datasets[:2], paths[:2])
    assert stacked["cube"].dims == ("image", "band", "y", "x")
    assert stacked["cube"].data.chunks[0] == (1, 1)
    assert list(stacked["source"].values) == ["a.png", "b.png"]
    assert list(stacked["band_name"].values) == ["R", "G", "B"]
    np.testing.assert_array_equal(stacked["cube"].values[1], images["b.png"].transpose(2, 0, 1))
    np.save(tmp_path / "stack.npy", np.zeros((2, 3, 6, 7), "uint8"))
    with pytest.raises(FormatError, match=r"stack.npy: is a \(image=2, .*stacks \(band, y, x\)"):
        check_same(
            [datasets[0], open_source(tmp_path / "stack.npy")], [paths[0], tmp_path / "stack.npy"]
        )
