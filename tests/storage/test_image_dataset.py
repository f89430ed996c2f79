"""Image data sets of mixed sizes (storage/dataset.py) and forced channels (--color).

References are Pillow and NumPy, never cubepipe's own output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from PIL import Image

from cubepipe.storage import (
    FormatError,
    InputError,
    StoreExistsError,
    describe,
    open_cube,
    open_images,
)
from cubepipe.storage.dataset import iter_images, pad_images, save_images
from cubepipe.storage.ingest import ingest, open_input
from cubepipe.storage.readers.image import open_image

PHOTOS = Path(__file__).parents[3] / "shared" / "data" / "photos"
#: Small real photos (grey PNG, RGB PNG, RGB JPEG), used when the shared data are here.
REAL = ("coins.png", "chelsea.png", "rocket.jpg")


def _noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def make_mixed_dir(folder: Path) -> Path:
    """Images of different sizes and channels: generated JPEG/PNG plus real photos."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_noise((37, 53), 1)).save(folder / "grey.jpg", quality=90)
    Image.fromarray(_noise((64, 48, 3), 2)).save(folder / "rgb.jpg", quality=85)
    Image.fromarray(_noise((20, 200, 4), 3), mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(_noise((530, 20), 4)).save(folder / "tall.png")  # crosses a 512 chunk
    for name in REAL if PHOTOS.is_dir() else ():
        shutil.copy(PHOTOS / name, folder / name)
    return folder


def pillow_rgb(path: Path) -> np.ndarray:
    """The independent reference: Pillow's convert("RGB") as ``(band, y, x)`` float64."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64).transpose(2, 0, 1)


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    return make_mixed_dir(tmp_path / "photos")


def test_mixed_sizes_become_one_padded_cube_plain_xarray_reads(mixed: Path, tmp_path: Path) -> None:
    out = ingest(mixed, tmp_path / "ds.zarr", color="rgb")
    files = sorted(mixed.iterdir())
    refs = {f.name: pillow_rgb(f) for f in files}
    ny = max(r.shape[1] for r in refs.values())
    nx = max(r.shape[2] for r in refs.values())

    # plain xarray, no cubepipe: one (image, band, y, x) array, crop with height/width
    plain = xr.open_zarr(out)
    cube = plain["cube"]
    assert cube.dims == ("image", "band", "y", "x")
    assert cube.shape == (len(files), 3, ny, nx) and cube.dtype == np.float32
    assert "mask" not in plain  # NaN and height/width say where the padding is
    for i, f in enumerate(files):
        h, w = int(plain["height"][i]), int(plain["width"][i])
        ref = refs[f.name]
        assert (h, w) == ref.shape[1:]
        img = cube[i].values
        np.testing.assert_array_equal(img[:, :h, :w], ref.astype(np.float32))
        assert np.isnan(img[:, h:, :]).all() and np.isnan(img[:, :, w:]).all()
    # plain zarr reads the arrays too
    group = zarr.open_group(str(out), mode="r")
    assert group["cube"].shape == cube.shape
    np.testing.assert_array_equal(group["height"][...], [r.shape[1] for r in refs.values()])

    # opened as stored: one image a chunk (the one-chunk height/width coordinates along
    # image must not make the whole data set one chunk)
    assert open_cube(out)["cube"].data.chunks[0] == (1,) * len(files)

    # the library reads each file back at its own size, names kept
    got = dict(open_images(out))
    assert list(got) == [f.name for f in files]
    for name, image in got.items():
        assert image.dims == ("band", "y", "x")
        np.testing.assert_array_equal(image.values, refs[name].astype(np.float32))

    d = describe(out)
    assert d["images"]["count"] == len(files) and d["images"]["padded"] is True
    assert d["images"]["height"] == [min(r.shape[1] for r in refs.values()), ny]
    real = sum(r.shape[1] * r.shape[2] for r in refs.values())
    assert d["images"]["filled"] == pytest.approx(real / (len(files) * ny * nx))


def test_padding_chunks_follow_the_store_grid(mixed: Path, no_compute) -> None:
    with no_compute:  # building the padded graph reads no pixel
        ds = open_input(mixed, color="rgb")
    cube = ds["cube"].data
    assert cube.chunks[0] == (1,) * cube.shape[0]
    assert set(cube.chunks[2][:-1]) <= {512} and set(cube.chunks[3][:-1]) <= {512}
    assert "mask" not in ds


def test_inputs_own_masks_are_padded_with_false() -> None:
    a = xr.Dataset({"cube": (("band", "y", "x"), da.ones((1, 2, 3), dtype=np.float32))})
    b = xr.Dataset(
        {
            "cube": (("band", "y", "x"), da.ones((1, 3, 2), dtype=np.float32)),
            "mask": (("y", "x"), da.from_array(np.array([[1, 0], [1, 1], [0, 1]], bool))),
        }
    )
    out = pad_images([a, b])
    expected = np.zeros((2, 3, 3), bool)
    expected[0, :2, :3] = True
    expected[1, :3, :2] = [[1, 0], [1, 1], [0, 1]]
    np.testing.assert_array_equal(out["mask"].values, expected)
    np.testing.assert_array_equal(out["height"].values, [2, 3])
    np.testing.assert_array_equal(out["width"].values, [3, 2])


def test_same_sized_stack_and_single_image_read_back(tmp_path: Path) -> None:
    d = tmp_path / "same"
    d.mkdir()
    for i in range(2):
        Image.fromarray(_noise((8, 9, 3), i)).save(d / f"{i}.png")
    out = ingest(d, tmp_path / "same.zarr")
    ds = open_cube(out)
    assert "mask" not in ds and "height" not in ds.coords  # unpadded, as before
    got = list(open_images(out))
    assert [n for n, _ in got] == ["0.png", "1.png"]
    np.testing.assert_array_equal(got[1][1].values, pillow_rgb(d / "1.png"))
    assert describe(out)["images"]["padded"] is False
    one = ingest(d / "0.png", tmp_path / "one.zarr")
    ((name, image),) = list(open_images(one))
    assert name.endswith("0.png") and image.shape == (3, 8, 9)
    assert describe(one)["images"] is None


def test_color_conversions_match_pillow(tmp_path: Path) -> None:
    rgb = tmp_path / "rgb.png"
    Image.fromarray(_noise((5, 7, 3), 5)).save(rgb)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(_noise((5, 7, 4), 6), mode="RGBA").save(rgba)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(_noise((6, 4), 7)).save(grey)
    la = tmp_path / "la.png"
    Image.fromarray(_noise((3, 5, 2), 8), mode="LA").save(la)
    pal = tmp_path / "pal.png"
    Image.fromarray(_noise((4, 4, 3), 9)).convert("P").save(pal)

    def read(p: Path, color: str) -> np.ndarray:
        return open_image(p, color=color)["cube"].values

    def pil(p: Path, mode: str) -> np.ndarray:
        with Image.open(p) as im:
            a = np.asarray(im.convert(mode))
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    for p in (rgb, rgba, grey, la, pal):
        np.testing.assert_array_equal(read(p, "rgb"), pil(p, "RGB"), err_msg=p.name)
        np.testing.assert_array_equal(read(p, "grey"), pil(p, "L"), err_msg=p.name)
    # the stated formula (ITU-R 601-2 luma, Pillow's integer rounding)
    r, g, b = pil(rgb, "RGB").astype(np.int64)
    np.testing.assert_array_equal(
        read(rgb, "grey")[0], (19595 * r + 38470 * g + 7471 * b + 32768) >> 16
    )
    ds = open_image(grey, color="rgb")
    assert list(ds["band_name"].values) == ["R", "G", "B"]
    assert list(open_image(rgb, color="grey")["band_name"].values) == ["grey"]
    with pytest.raises(InputError, match="unknown color"):
        open_image(rgb, color="cmyk")


def test_color_keeps_16_bit_and_bilevel_values(tmp_path: Path) -> None:
    g16 = tmp_path / "g16.png"
    values = np.array([[0, 300, 65535], [1, 40000, 7]], dtype=np.uint16)
    Image.fromarray(values).save(g16)  # 16-bit grey (Pillow's I;16)
    got = open_image(g16, color="rgb")["cube"]
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got.values, np.stack([values] * 3))
    bw = tmp_path / "bw.png"
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1").save(bw)
    np.testing.assert_array_equal(
        open_image(bw, color="rgb")["cube"].values, np.stack([[[0, 1], [1, 0]]] * 3)
    )


def test_color_needs_png_or_jpeg(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((3, 4, 4), np.float32))
    with pytest.raises(InputError, match=r"a\.npy: --color .* applies to PNG and JPEG"):
        open_input(tmp_path / "a.npy", color="rgb")


def test_grey_beside_rgb_asks_for_color(tmp_path: Path) -> None:
    d = make_mixed_dir(tmp_path / "d")
    with pytest.raises(FormatError, match=r"g: image is \(band=\d.* first file .*--color rgb"):
        open_input(d)


def test_cut_jpeg_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    d = make_mixed_dir(tmp_path / "d")
    whole = (d / "rgb.jpg").read_bytes()
    (d / "rgb.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FormatError, match=r"rgb\.jpg: truncated or damaged JPEG"):
        ingest(d, tmp_path / "out.zarr", color="rgb")
    assert not (tmp_path / "out.zarr").exists()
    # a whole JPEG followed by a long trailer (some cameras append one) is not "cut"
    (d / "rgb.jpg").write_bytes(whole + b"\x00" * 10_000)
    assert open_image(d / "rgb.jpg")["cube"].shape == (3, 64, 48)


def test_save_images_writes_each_file_at_its_size(mixed: Path, tmp_path: Path) -> None:
    out = ingest(mixed, tmp_path / "ds.zarr", color="rgb")
    written = save_images(out, tmp_path / "npy")
    files = sorted(mixed.iterdir())
    assert [p.name for p in written] == [f"{f.name}.npy" for f in files]
    for f, p in zip(files, written, strict=True):
        np.testing.assert_array_equal(np.load(p), pillow_rgb(f).astype(np.float32))
    with pytest.raises(StoreExistsError, match="already exists"):
        save_images(out, tmp_path / "npy")
    assert save_images(out, tmp_path / "npy", overwrite=True) == written


def test_iter_images_refuses_other_dims() -> None:
    ds = xr.Dataset({"cube": (("frame", "y", "x"), np.zeros((1, 2, 2)))})
    with pytest.raises(InputError, match="expected"):
        list(iter_images(ds))
