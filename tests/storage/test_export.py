"""Export: exact float TIFF/NPY read back by tifffile, NumPy, Pillow and OpenCV; scaled
PNG/JPEG previews whose sidecars restore floats within the recorded error."""

from __future__ import annotations

import tempfile
import tracemalloc
import warnings
from pathlib import Path

import cv2
import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import xarray as xr
import zarr
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from cubepipe.storage import (
    CubepipeWarning,
    IncompleteStoreError,
    InputError,
    StoreExistsError,
    write_cube,
)
from cubepipe.storage.encodings import encode
from cubepipe.storage.export import export
from cubepipe.storage.sidecar import read_sidecar
from cubepipe.storage.writers import tiff as tiff_writer
from cubepipe.storage.writers.scaling import (
    PERCENTILE_BINS,
    Quantizer,
    parse_scale,
    resolve_range,
)

from ..conftest import signed_float_block


def _store(path: Path, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> Path:
    dims = ("band", "y", "x") if data.ndim == 3 else ("frame", "band", "y", "x")
    arr = da.from_array(data, chunks=chunks or data.shape)
    cs = {d: c[0] for d, c in zip(dims, arr.chunks, strict=True) if d in ("y", "x")}
    return write_cube(xr.Dataset({"cube": (dims, arr)}), path, chunks=cs)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}")


def _awkward(shape: tuple[int, ...], dtype: type, seed: int) -> np.ndarray:
    a = signed_float_block(shape, seed).astype(dtype)
    if dtype is np.float64 and a.size > 12:
        a.reshape(-1)[9:12] = [5e-324, -1.7976931348623157e308, 1.7976931348623157e308]
    return a


def _restore(img_path: Path) -> tuple[np.ndarray, dict]:
    """Floats from an exported image and its sidecar, NaN where the NaN code is."""
    side = read_sidecar(img_path)
    assert side is not None
    with Image.open(img_path) as im:
        q = np.asarray(im).astype(np.float64)
    values = q * side["scale"] + side["offset"]
    return np.where(q == side["nan_value"], np.nan, values), side


# -- exact floats --------------------------------------------------------------------------


@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 17), st.integers(1, 19)),
    dtype=st.sampled_from([np.float32, np.float64]),
    chunk=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    seed=st.integers(0, 1000),
)
def test_tif_and_npy_are_bit_exact_for_any_shape_dtype_and_chunking(
    shape: tuple[int, int, int], dtype: type, chunk: tuple[int, int], seed: int
) -> None:
    data = _awkward(shape, dtype, seed)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        store = _store(d / "s.zarr", data, chunks=(shape[0], *chunk))
        tif, npy = export(store, d / "o.tif"), export(store, d / "o.npy")
        assert tif.dtype == npy.dtype == np.dtype(dtype).name
        assert tif.max_abs_error == 0.0
        with tifffile.TiffFile(tif[0]) as t:
            assert len(t.pages) == shape[0]
            assert np.array_equal(_bits(t.asarray().reshape(shape)), _bits(data))
        back = np.load(npy[0])
        assert back.dtype == dtype and np.array_equal(_bits(back), _bits(data))
        if dtype is np.float32:
            ok, pages = cv2.imreadmulti(str(tif[0]), flags=cv2.IMREAD_UNCHANGED)
            assert ok and len(pages) == shape[0]
            for page, band in zip(pages, data, strict=True):
                assert np.array_equal(_bits(page.reshape(band.shape)), _bits(band))
            if shape[0] == 1:
                with Image.open(tif[0]) as im:
                    assert im.mode == "F"
                    assert np.array_equal(_bits(np.asarray(im)), _bits(data[0]))
                single = cv2.imread(str(tif[0]), cv2.IMREAD_UNCHANGED)
                assert np.array_equal(_bits(single.reshape(shape[1:])), _bits(data[0]))
        assert sorted(p.name for p in d.iterdir()) == ["o.npy", "o.tif", "s.zarr"]


def test_single_band_subset_reads_in_pillow_and_opencv(tmp_path: Path) -> None:
    data = signed_float_block((5, 33, 47), seed=2)
    store = _store(tmp_path / "s.zarr", data, chunks=(5, 16, 16))
    (tif,) = export(store, tmp_path / "b3.tiff", bands=[3])
    with Image.open(tif) as im:
        assert im.mode == "F" and im.size == (47, 33)
        assert np.array_equal(_bits(np.asarray(im)), _bits(data[3]))
    assert np.array_equal(_bits(cv2.imread(str(tif), cv2.IMREAD_UNCHANGED)), _bits(data[3]))
    (multi,) = export(store, tmp_path / "sel.tif", bands=[4, 0])
    assert np.array_equal(_bits(tifffile.imread(multi)), _bits(data[[4, 0]]))


def test_bigtiff_above_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path / "s.zarr", signed_float_block((2, 8, 8)))
    (small,) = export(store, tmp_path / "small.tif")
    monkeypatch.setattr(tiff_writer, "BIGTIFF_BYTES", 100)
    (big,) = export(store, tmp_path / "big.tif")
    with tifffile.TiffFile(small) as a, tifffile.TiffFile(big) as b:
        assert not a.is_bigtiff and b.is_bigtiff
        assert np.array_equal(_bits(a.asarray()), _bits(b.asarray()))


def test_frames_export_as_pages_and_a_4d_npy(tmp_path: Path) -> None:
    data = signed_float_block((3, 2, 6, 5), seed=8)
    store = _store(tmp_path / "v.zarr", data, chunks=(1, 2, 6, 5))
    (tif,) = export(store, tmp_path / "v.tif")
    with tifffile.TiffFile(tif) as t:
        assert len(t.pages) == 6 and t.series[0].shape == (3, 2, 6, 5)
        assert np.array_equal(_bits(t.asarray()), _bits(data))
    (npy,) = export(store, tmp_path / "v.npy", bands=[1])
    assert np.array_equal(_bits(np.load(npy)), _bits(data[:, [1]]))


def test_encoded_stores_export_decoded_values(tmp_path: Path) -> None:
    data = signed_float_block((2, 16, 12), seed=9)
    data[np.isinf(data) | (np.abs(data) > 1e30)] = 3.0
    ds = xr.Dataset({"cube": (("band", "y", "x"), da.from_array(data, chunks=(2, 8, 8)))})
    store = write_cube(encode(ds, "int16-quantized"), tmp_path / "q.zarr")
    bound = xr.open_zarr(store)["cube"].attrs["max_abs_error"]
    f32 = export(store, tmp_path / "q32.tif")  # the source dtype: float32, rounding measured
    f64 = export(store, tmp_path / "q64.npy", bits=64)  # exact decoded values
    assert f32.dtype == "float32" and 0 < f32.max_abs_error < 1e-3
    assert "int16-quantized" in f32.summary
    decoded = xr.open_zarr(store)["cube"].values
    assert np.array_equal(np.load(f64[0]), decoded, equal_nan=True)
    fin = np.isfinite(data)
    err = np.abs(tifffile.imread(f32[0]).astype(np.float64) - data)[fin].max()
    assert err <= bound + f32.max_abs_error


def test_narrowing_overflow_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    data = np.full((1, 4, 4), 1e300)
    store = _store(tmp_path / "s.zarr", data)
    with pytest.raises(InputError, match="overflow 16 value.*--bits 64"):
        export(store, tmp_path / "o.tif", bits=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.zarr", signed_float_block((1, 4, 4)))
    out = tmp_path / "o.npy"
    out.write_bytes(b"keep me")
    with pytest.raises(StoreExistsError, match="--overwrite"):
        export(store, out)
    assert out.read_bytes() == b"keep me"
    export(store, out, overwrite=True)
    assert np.load(out).shape == (1, 4, 4)


@pytest.mark.parametrize(
    ("out", "kwargs", "match"),
    [
        ("o.bmp", {}, r"unknown suffix '\.bmp'; supported: \.tif, \.tiff, \.npy, \.png"),
        ("o.tif", {"scale": "minmax"}, "--scale applies to .png/.jpg"),
        ("o.tif", {"bits": 16}, "not a float width"),
        ("o.jpg", {"scale": "minmax", "bits": 16}, "JPEG: 8"),
        ("o.png", {"scale": "minmax", "bands": [0, 1, 2], "bits": 16}, "16-bit RGB"),
        ("o.png", {"scale": "minmax", "bands": [7]}, "has 3 band.*0..2"),
        ("o.png", {"scale": "median"}, "bad --scale 'median'"),
        ("o.png", {"scale": "percentile:5,200"}, "0..100"),
        ("o.npy", {"variable": "nope"}, "no variable 'nope'"),
    ],
)
def test_bad_requests_are_one_line_input_errors(
    tmp_path: Path, out: str, kwargs: dict, match: str
) -> None:
    store = _store(tmp_path / "s.zarr", signed_float_block((3, 4, 4)))
    with pytest.raises(InputError, match=match) as exc:
        export(store, tmp_path / out, **kwargs)
    assert "\n" not in str(exc.value)


# -- scaled previews -----------------------------------------------------------------------


def _preview_data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(-3.0, 40.0, size=(4, 37, 41)).astype(np.float32)
    a[:, 5:9, 6:12] = np.nan
    a[0, 0, :3] = [-0.0, 1e-45, -1e-45]
    return a


def test_png_without_scale_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.zarr", _preview_data())
    with pytest.raises(InputError) as exc:
        export(store, tmp_path / "o.png")
    msg = str(exc.value)
    assert "non-negative integers" in msg and "--scale minmax" in msg and ".tif/.npy" in msg
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(("bits", "suffix"), [(None, ".png"), (16, ".png"), (None, ".jpg")])
def test_minmax_preview_restores_within_the_recorded_error(
    tmp_path: Path, bits: int | None, suffix: str
) -> None:
    data = _preview_data()
    store = _store(tmp_path / "s.zarr", data, chunks=(4, 16, 16))
    out = export(store, tmp_path / f"b2{suffix}", bands=[2], scale="minmax", bits=bits)
    assert len(out) == 1 and out.clipped == 0
    restored, side = _restore(out[0])
    assert side["bits"] == (bits or 8) and side["bands"] == [2] and side["method"] == "minmax"
    assert side["range"] == [float(np.nanmin(data[2])), float(np.nanmax(data[2]))]
    valid = ~np.isnan(data[2]) & ~np.isnan(restored)
    err = np.abs(restored[valid] - data[2][valid].astype(np.float64)).max()
    assert err <= side["max_abs_error"] == out.max_abs_error
    mismatches = np.count_nonzero(np.isnan(restored) != np.isnan(data[2]))
    if suffix == ".png":
        assert mismatches == 0
        assert side["max_abs_error"] < 0.51 * side["scale"]
    else:  # JPEG is lossy: its measured deviation is part of the bound, NaN marks may blur
        assert side["max_abs_error"] >= (side["jpeg_max_code_error"] + 0.5) * side["scale"]
        assert side["nan_mismatches"] == mismatches


def test_rgb_preview_from_three_bands(tmp_path: Path) -> None:
    data = _preview_data(1)
    store = _store(tmp_path / "s.zarr", data)
    (png,) = export(store, tmp_path / "rgb.png", bands=[3, 0, 1], scale="minmax")
    with Image.open(png) as im:
        assert im.mode == "RGB" and im.size == (41, 37)
    restored, side = _restore(png)
    assert side["channels"] == "rgb" and side["bands"] == [3, 0, 1]
    want = np.moveaxis(data[[3, 0, 1]], 0, -1).astype(np.float64)
    assert np.array_equal(np.isnan(restored), np.isnan(want))
    assert np.nanmax(np.abs(restored - want)) <= side["max_abs_error"]
    cv = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)  # OpenCV: BGR order
    assert np.array_equal(cv[..., ::-1], np.asarray(Image.open(png)))


def test_percentile_clipping_is_counted_warned_and_bounded(tmp_path: Path) -> None:
    data = _preview_data(2)
    store = _store(tmp_path / "s.zarr", data)
    with pytest.warns(CubepipeWarning, match="clipped"):
        out = export(store, tmp_path / "p.png", scale="percentile:5,95", bits=16)
    assert [p.name for p in out] == ["p_b00.png", "p_b01.png", "p_b02.png", "p_b03.png"]
    total = 0
    lo, hi = np.nanpercentile(data.astype(np.float64), [5, 95])
    for b, path in enumerate(out):
        restored, side = _restore(path)
        assert side["bands"] == [b]
        slo, shi = side["range"]
        assert abs(slo - lo) <= (np.nanmax(data) - np.nanmin(data)) / PERCENTILE_BINS
        assert abs(shi - hi) <= (np.nanmax(data) - np.nanmin(data)) / PERCENTILE_BINS
        band = data[b].astype(np.float64)
        assert side["clipped"] == np.sum(band < slo) + np.sum(band > shi) > 0
        err = np.nanmax(np.abs(restored - band))
        assert 0.5 * side["scale"] < err <= side["max_abs_error"]  # clipping dominates
        total += side["clipped"]
    assert out.clipped == total


def test_percentile_estimate_matches_numpy(tmp_path: Path) -> None:
    data = np.random.default_rng(5).lognormal(0, 2, size=(3, 64, 64)) - 2.0
    arr = da.from_array(data, chunks=(3, 16, 16))
    width = (data.max() - data.min()) / PERCENTILE_BINS
    for lo, hi in [(0, 100), (1, 99), (25, 75), (0.1, 99.9)]:
        got = resolve_range(arr, parse_scale(f"percentile:{lo},{hi}"), what="x")
        want = np.percentile(data, [lo, hi])
        assert np.all(np.abs(np.array(got) - want) <= width)


def test_fixed_scale_and_frames_write_numbered_files(tmp_path: Path) -> None:
    data = signed_float_block((2, 1, 6, 7), seed=4)
    store = _store(tmp_path / "v.zarr", data, chunks=(1, 1, 6, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CubepipeWarning)  # +-3.4e38 and +-1000s get clipped
        out = export(store, tmp_path / "f.png", scale="fixed:-10,10")
    assert [p.name for p in out] == ["f_frame0000.png", "f_frame0001.png"]
    for i, path in enumerate(out):
        restored, side = _restore(path)
        assert side["frame"] == i and side["range"] == [-10.0, 10.0]
        assert side["infinite"] == 0 and side["clipped"] > 0
        finite = np.isfinite(data[i, 0])
        assert np.abs(restored[finite] - data[i, 0][finite]).max() <= side["max_abs_error"]
    with pytest.raises(StoreExistsError, match="f_frame0000.png"):
        export(store, tmp_path / "f.png", scale="fixed:-10,10")


@given(
    centre=st.floats(-1e6, 1e6),
    spread=st.floats(0.0, 1e6),
    lo=st.floats(-2e6, 2e6),
    width=st.sampled_from([0.0, 1e-3, 1.0, 1e3, 1e6]),
    bits=st.sampled_from([8, 16]),
    seed=st.integers(0, 1000),
)
def test_quantizer_codes_and_bound(
    centre: float, spread: float, lo: float, width: float, bits: int, seed: int
) -> None:
    x = (centre + spread * np.random.default_rng(seed).standard_normal((2, 5, 6))).astype(
        np.float32
    )
    x[0, 0, :3] = [np.nan, np.inf, -np.inf]
    qz = Quantizer(lo, lo + width, bits)
    q, stats = qz(x)
    assert q.dtype == qz.dtype and np.array_equal(q == 0, np.isnan(x))
    assert q[~np.isnan(x)].min() >= 1 and q.max() <= qz.qmax
    fin = np.isfinite(x)
    restored = q.astype(np.float64) * qz.scale + qz.offset
    err = np.abs(restored[fin] - x[fin].astype(np.float64)).max()
    assert err <= qz.bound(float(stats[..., 4].max()))
    x64 = x.astype(np.float64)  # compare in float64, as the quantizer does
    assert stats[..., 1].sum() + stats[..., 2].sum() == np.sum(x64 < lo) + np.sum(x64 > lo + width)


def test_incomplete_store_needs_allow_incomplete(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.zarr", signed_float_block((1, 4, 4)))
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["cubepipe"] = {**group.attrs["cubepipe"], "complete": False}
    with pytest.raises(IncompleteStoreError, match="--allow-incomplete"):
        export(store, tmp_path / "o.npy")
    (out,) = export(store, tmp_path / "o.npy", allow_incomplete=True)
    assert np.load(out).shape == (1, 4, 4)


@pytest.mark.parametrize(("name", "kwargs"), [("big.tif", {}), ("big.png", {"scale": "minmax"})])
def test_exports_stream_chunk_by_chunk(tmp_path: Path, name: str, kwargs: dict) -> None:
    shape, chunks = (16, 1024, 1024), (16, 256, 256)  # 64 MiB cube, 4 MiB chunks
    data = da.random.default_rng(0).standard_normal(shape, chunks=chunks, dtype=np.float32)
    store = write_cube(
        xr.Dataset({"cube": (("band", "y", "x"), data)}),
        tmp_path / "s.zarr",
        chunks={"y": 256, "x": 256},
    )
    tracemalloc.start()
    try:
        with dask.config.set(scheduler="synchronous"):
            out = export(store, tmp_path / name, bands=[0] if kwargs else None, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out[0].stat().st_size > 0
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 64 MiB cube"
