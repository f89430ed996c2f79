"""Encodings: lossless default, float16 and int16-quantized, through real stores."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given
from hypothesis import strategies as st

from cubepipe.storage import InputError, describe, open_cube, write_cube
from cubepipe.storage.encodings import ENCODINGS, FLOAT16_MAX, INT16_FILL, encode

from ..conftest import signed_float_block


def _ds(data: np.ndarray, chunks: tuple[int, ...] = (-1, 8, 8), **attrs: object) -> xr.Dataset:
    dims = ("band", "y", "x")[-data.ndim :]
    return xr.Dataset({"cube": (dims, da.from_array(data, chunks=chunks[-data.ndim :]), attrs)})


def _finite_block(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Signed float32 with NaN, -0.0 and subnormals, but no +-inf or huge values."""
    a = signed_float_block(shape, seed)
    a[np.isinf(a) | (np.abs(a) > 1e30)] = 12.5
    return a


def _max_err(decoded: np.ndarray, original: np.ndarray) -> float:
    fin = np.isfinite(original)
    return float(np.max(np.abs(decoded[fin].astype(np.float64) - original[fin].astype(np.float64))))


def test_encoding_names_and_unknown_encoding() -> None:
    assert ENCODINGS == ("float32", "float16", "int16-quantized")
    with pytest.raises(InputError) as exc:
        encode(_ds(np.zeros((2, 4, 4), np.float32)), "bfloat16")
    msg = str(exc.value)
    assert "\n" not in msg and "bfloat16" in msg
    assert all(name in msg for name in ENCODINGS)


def test_unknown_variable_and_non_real_dtype() -> None:
    with pytest.raises(InputError, match="'nope'.*has: cube"):
        encode(_ds(np.zeros((1, 4, 4), np.float32)), "float16", variables=("nope",))
    with pytest.raises(InputError, match="complex64"):
        encode(_ds(np.zeros((1, 4, 4), np.complex64)), "float16")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_encoding_is_lossless_for_float32_and_float64(
    tmp_path: Path, dtype: type, no_compute
) -> None:
    data = signed_float_block((3, 12, 10), seed=3).astype(dtype)
    if dtype is np.float64:
        data[0, 5, :3] = [5e-324, -1.7976931348623157e308, 1 / 3]
    with no_compute:  # the lossless encoding reads nothing
        enc = encode(_ds(data), "float32")
    assert isinstance(enc["cube"].data, da.Array) and enc["cube"].dtype == dtype
    assert enc["cube"].attrs["cubepipe_encoding"] == np.dtype(dtype).name
    assert enc["cube"].attrs["max_abs_error"] == 0.0
    back = open_cube(write_cube(enc, tmp_path / "s.zarr"))["cube"].values
    assert back.dtype == dtype
    assert np.array_equal(back.view(f"u{back.itemsize}"), data.view(f"u{data.itemsize}"))


def test_float16_round_trip_records_the_measured_error(tmp_path: Path) -> None:
    data = _finite_block((3, 20, 18), seed=4)
    data[1, 0, :4] = [np.inf, -np.inf, FLOAT16_MAX, -FLOAT16_MAX]
    enc = encode(_ds(data), "float16")
    expected = _max_err(data.astype(np.float16), data)
    assert enc["cube"].attrs["max_abs_error"] == expected > 0
    assert enc["cube"].attrs["cubepipe_source_dtype"] == "float32"
    path = write_cube(enc, tmp_path / "h.zarr", allow_nonfinite=True)  # +-inf is data here
    assert zarr.open_array(str(path / "cube")).dtype == np.float16
    for back in (open_cube(path)["cube"], xr.open_zarr(path)["cube"]):
        v = back.values
        assert v.dtype == np.float16  # documented: readers get float16 back
        assert np.array_equal(np.isnan(v), np.isnan(data))
        assert np.array_equal(v[np.isinf(data)], data[np.isinf(data)])
        assert _max_err(v, data) <= back.attrs["max_abs_error"]


def test_float16_refuses_values_it_cannot_represent() -> None:
    data = _finite_block((2, 8, 8))
    data[1, 3, 3] = -70000.5
    with pytest.raises(InputError) as exc:
        encode(_ds(data), "float16")
    msg = str(exc.value)
    assert "\n" not in msg
    for part in ("'cube'", "70000.5", "65504", "int16-quantized", "float32"):
        assert part in msg


def test_int16_quantized_decodes_through_open_cube_and_plain_xarray(tmp_path: Path) -> None:
    data = _finite_block((4, 30, 26), seed=5)
    enc = encode(_ds(data, chunks=(2, 16, 8)), "int16-quantized")
    attrs = enc["cube"].attrs
    assert enc["cube"].dtype == np.int16 and isinstance(enc["cube"].data, da.Array)
    assert attrs["cubepipe_encoding"] == "int16-quantized" and attrs["_FillValue"] == INT16_FILL
    path = write_cube(enc, tmp_path / "q.zarr")

    raw = zarr.open_array(str(path / "cube"))
    meta = json.loads((path / "cube" / "zarr.json").read_text())
    assert raw.dtype == np.int16 and raw.fill_value == INT16_FILL == meta["fill_value"]
    codes = raw[:]
    assert codes.min() == INT16_FILL and codes[codes != INT16_FILL].min() == -32767
    assert codes.max() == 32767

    readers = {
        "open_cube": open_cube(path)["cube"],
        "xr.open_zarr": xr.open_zarr(path)["cube"],
        "fill_value as mask": xr.open_zarr(path, use_zarr_fill_value_as_mask=True)["cube"],
    }
    bound = attrs["max_abs_error"]
    for name, back in readers.items():
        v = back.values
        assert v.dtype.kind == "f", name
        assert np.array_equal(np.isnan(v), np.isnan(data)), name
        err = _max_err(v, data)
        assert err <= bound, name
        assert err > 0.45 * attrs["scale_factor"], name  # the bound is tight, not vacuous
    assert open_cube(path)["cube"].attrs["max_abs_error"] == bound


def test_int16_quantized_refuses_infinity() -> None:
    data = _finite_block((2, 8, 8))
    data[0, 1, 1] = -np.inf
    with pytest.raises(InputError, match=r"'cube' holds 1 infinite.*float32"):
        encode(_ds(data), "int16-quantized")


@pytest.mark.parametrize("fill", [7.25, np.nan, -1e-45])
def test_int16_quantized_constant_and_all_nan_are_exact(tmp_path: Path, fill: float) -> None:
    data = np.full((2, 5, 6), fill, dtype=np.float32)
    data[0, 0, 0] = np.nan
    path = write_cube(encode(_ds(data), "int16-quantized"), tmp_path / "c.zarr")
    back = xr.open_zarr(path)["cube"].values
    assert np.array_equal(back, data.astype(np.float64), equal_nan=True)
    assert xr.open_zarr(path)["cube"].attrs["max_abs_error"] == 0.0


@given(
    lo=st.floats(-1e30, 1e30),
    width=st.floats(1e-6, 1e30),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_int16_bound_holds_for_any_range(lo: float, width: float, dtype: type, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = (lo + width * rng.random((2, 9, 7))).astype(dtype)
    data[0, 0, 0] = np.nan
    enc = encode(_ds(data, chunks=(1, 4, 4)), "int16-quantized")["cube"]
    q = enc.values
    a = enc.attrs
    decoded = np.where(q == INT16_FILL, np.nan, q.astype(np.float64) * a["scale_factor"])
    decoded = decoded + a["add_offset"]  # exactly xarray's float64 CF decoding
    assert np.array_equal(np.isnan(decoded), np.isnan(data))
    assert _max_err(decoded, data) <= a["max_abs_error"]


def test_existing_error_is_carried_and_other_variables_untouched() -> None:
    data = _finite_block((2, 8, 8))
    ds = _ds(data, max_abs_error=0.5)
    ds["other"] = (("y", "x"), np.ones((8, 8), np.float64))
    enc = encode(ds, "float16")
    expected = 0.5 + _max_err(data.astype(np.float16), data)
    assert enc["cube"].attrs["max_abs_error"] == pytest.approx(expected)
    assert enc["other"].dtype == np.float64
    lossless = encode(ds, "float32")["cube"].attrs
    assert lossless["max_abs_error"] == 0.5 and lossless["cubepipe_encoding"] == "float32"
    ds["cube"].attrs["cubepipe_encoding"] = "sidecar"  # as ingest labels restored floats
    assert encode(ds, "float32")["cube"].attrs["cubepipe_encoding"] == "sidecar"
    assert encode(ds, "float16")["cube"].attrs["cubepipe_encoding"] == "float16"


def test_describe_reports_encoding_and_error_bound(tmp_path: Path) -> None:
    path = write_cube(encode(_ds(_finite_block((2, 8, 8))), "int16-quantized"), tmp_path / "q.zarr")
    enc = describe(path)["variables"]["cube"]["encoding"]
    assert enc["cubepipe_encoding"] == "int16-quantized"
    assert {"scale_factor", "add_offset", "max_abs_error", "_FillValue"} <= set(enc)
