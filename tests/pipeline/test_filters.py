"""Unmasked filtering: kernels, methods, modes, chunking, spectral axis, laziness."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.signal as signal
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

from cubepipe.pipeline.filters import (
    DIRECT_MAX_COST,
    FILTER_ATTR,
    MIN_CUTOFF,
    filter_cube,
    make_kernel,
    parse_kernel,
)
from cubepipe.storage.errors import InputError

SHAPE = (3, 96, 128)


def plane_data(dtype=np.float64, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise, signed, with a nonzero mean (edges matter)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    base = np.sin(xx / 9.0) + np.cos(yy / 6.0) + 0.5
    return (base[None] + 0.3 * rng.standard_normal(SHAPE)).astype(dtype)


def as_ds(a: np.ndarray, chunks=(3, 40, 50)) -> xr.Dataset:
    dims = ("band", "y", "x")[-a.ndim :] if a.ndim <= 3 else ("image", "band", "y", "x")
    return xr.Dataset({"cube": (dims, da.from_array(a, chunks=chunks))})


def assert_rel(ours: np.ndarray, ref: np.ndarray, rel: float) -> None:
    """Relative to each value and, for values near zero (signed data cross zero), to the
    output's scale: ``|ours - ref| <= rel * |ref| + rel * max|ref|``."""
    np.testing.assert_allclose(ours, ref, rtol=rel, atol=rel * np.nanmax(np.abs(ref)))


def with_file_kernel(tmp_path, k: np.ndarray) -> str:
    path = tmp_path / "k.npy"
    np.save(path, k)
    return f"file:{path}"


ASYM = np.arange(20, dtype=np.float64).reshape(5, 4) - 6.5  # even width, mixed signs


@pytest.mark.parametrize("mode", ["reflect", "nearest", "constant"])
@pytest.mark.parametrize("method", ["direct", "rfft"])
@pytest.mark.parametrize(
    "spec", ["gaussian:2", "box:5", "box:4", "file", "lowpass:0.3", "highpass:0.35"]
)
def test_matches_scipy_ndimage_convolve(spec, method, mode, tmp_path) -> None:
    if spec == "file":
        spec = with_file_kernel(tmp_path, ASYM)
    a = plane_data()
    w = make_kernel(spec, 2).taps.weights
    out = filter_cube(as_ds(a), spec, method=method, mode=mode)
    assert out["cube"].dtype == np.float64
    ref = ndi.convolve(a, w[None], mode=mode)
    assert_rel(out["cube"].values, ref, 1e-6)
    assert out["cube"].attrs[FILTER_ATTR]["method"] == method


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_float32_matches_float64_references(method) -> None:
    a = plane_data(np.float32)
    ref64 = a.astype(np.float64)
    cases = {
        "gaussian:2.5": ndi.gaussian_filter(ref64, (0, 2.5, 2.5), mode="reflect"),
        "box:7": ndi.uniform_filter(ref64, (1, 7, 7), mode="reflect"),
    }
    for spec, ref in cases.items():
        out = filter_cube(as_ds(a), spec, method=method)["cube"]
        assert out.dtype == np.float32
        assert_rel(out.values, ref, 1e-6)
    # Zero padding == scipy.signal.fftconvolve(mode="same") for odd kernels.
    w = make_kernel("gaussian:3", 2).taps.weights
    ref = np.stack([signal.fftconvolve(p, w, mode="same") for p in ref64])
    out = filter_cube(as_ds(a), "gaussian:3", method=method, mode="constant")["cube"]
    assert_rel(out.values, ref, 1e-6)


def test_kernel_specs_parse_and_build(tmp_path) -> None:
    g = make_kernel("gaussian:1.5", 2)
    assert g.taps.shape == (13, 13) and g.taps.factors is not None
    assert g.taps.total == pytest.approx(1.0)
    assert make_kernel("box:4", 1).taps.shape == (4,)
    low = make_kernel("lowpass:0.1", 2)
    assert low.taps.shape[0] % 2 == 1 and low.taps.total == pytest.approx(1.0)
    assert make_kernel("highpass:0.1", 2).taps.total == pytest.approx(0.0, abs=1e-12)
    band = make_kernel("bandpass:0.05,0.2", 2)
    assert band.taps.total == pytest.approx(0.0, abs=1e-12) and len(band.terms) == 2
    one_d = with_file_kernel(tmp_path, np.array([1.0, 2.0, 1.0]))
    k = make_kernel(one_d, 2)  # a 1-D file kernel on planes: along y, then x
    np.testing.assert_array_equal(k.taps.weights, np.outer([1, 2, 1], [1, 2, 1]))
    assert parse_kernel(" Gaussian:2 ").kind == "gaussian"


@pytest.mark.parametrize(
    "spec",
    [
        "gaussian",
        "gaussian:",
        "gaussian:-1",
        "gaussian:nan",
        "box:2.5",
        "box:0",
        "lowpass:0.5",
        f"lowpass:{MIN_CUTOFF / 2}",
        "bandpass:0.2",
        "bandpass:0.3,0.1",
        "median:3",
        "file:/nonexistent/k.npy",
    ],
)
def test_bad_kernel_specs_name_the_spec_and_the_valid_forms(spec) -> None:
    with pytest.raises(InputError) as exc:
        parse_kernel(spec)
    msg = str(exc.value)
    assert repr(spec) in msg and "gaussian:SIGMA" in msg and "bandpass:F1,F2" in msg
    assert "\n" not in msg


def test_file_kernels_are_loaded_without_pickle(tmp_path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a readable"):
        parse_kernel(f"file:{tmp_path / 'obj.npy'}")
    np.save(tmp_path / "k3.npy", np.ones((2, 2, 2)))
    with pytest.raises(InputError, match="1-D or 2-D"):
        parse_kernel(f"file:{tmp_path / 'k3.npy'}")
    np.save(tmp_path / "zero.npy", np.zeros(3))
    with pytest.raises(InputError, match="not all zero"):
        parse_kernel(f"file:{tmp_path / 'zero.npy'}")
    spec = with_file_kernel(tmp_path, np.ones((3, 3)))
    with pytest.raises(InputError, match="1-D kernel"):
        filter_cube(as_ds(plane_data()), spec, axis="spectral")


def test_bad_options() -> None:
    ds = as_ds(plane_data())
    cases = {
        "unknown mode 'wrap'; expected one of reflect, nearest, constant": {"mode": "wrap"},
        "unknown method 'fftw'; expected one of auto, direct, rfft, fft": {"method": "fftw"},
        "unknown axis 'band'; expected one of spatial, spectral": {"axis": "band"},
        r"min_support must be in \(0, 1\], got 0": {"min_support": 0},
    }
    for message, kwargs in cases.items():
        with pytest.raises(InputError, match=message):
            filter_cube(ds, "box:3", **kwargs)


def test_method_choice_is_by_kernel_cost_and_reported(tmp_path) -> None:
    ds = as_ds(plane_data())
    pick = {
        "gaussian:2": "direct",  # separable, 2 x 17 taps
        "gaussian:8": "rfft",  # 2 x 65 taps
        "box:31": "direct",
        with_file_kernel(tmp_path, np.ones((9, 9))): "rfft",  # 81 dense taps
        "lowpass:0.2": "rfft",
    }
    for spec, expected in pick.items():
        report = filter_cube(ds, spec)["cube"].attrs[FILTER_ATTR]
        assert report["method"] == expected, (spec, report)
        assert report["method_reason"].startswith("auto:")
        assert str(DIRECT_MAX_COST) in report["method_reason"]
    report = filter_cube(ds, "gaussian:2", method="fft")["cube"].attrs[FILTER_ATTR]
    # "fft" is another name of "rfft"; the report says which transform ran.
    assert report["method"] == "rfft" and "requested" in report["method_reason"]
    assert report["kernel_shape"] == [17, 17] and report["halo"] == [8, 8]


def butterworth(fy: np.ndarray, fx: np.ndarray, cutoff: float, order: int = 2) -> np.ndarray:
    """The documented response, written out here: the periodic Butterworth of order 2,
    ``1 / (1 + (rho / rho_c) ** (2 n))`` with ``rho**2 = sin(pi fy)**2 + sin(pi fx)**2``
    and ``rho_c = sin(pi F)`` (``rho ~ pi |f|``: the classic Butterworth at low f)."""
    rho2 = np.sin(np.pi * fy) ** 2 + np.sin(np.pi * fx) ** 2
    return 1.0 / (1.0 + (rho2 / np.sin(np.pi * cutoff) ** 2) ** order)


def fft_lowpass_reference(a: np.ndarray, cutoff: float, mode: str, pad: int) -> np.ndarray:
    """Each plane padded by ``pad`` (numpy.pad in scipy.ndimage's boundary mode) and
    multiplied by :func:`butterworth` in numpy.fft's frequency domain."""
    np_mode = {"reflect": "symmetric", "nearest": "edge", "constant": "constant"}[mode]
    p = np.pad(a, ((0, 0), (pad, pad), (pad, pad)), mode=np_mode)
    fy, fx = np.meshgrid(np.fft.fftfreq(p.shape[1]), np.fft.rfftfreq(p.shape[2]), indexing="ij")
    out = np.fft.irfft2(np.fft.rfft2(p) * butterworth(fy, fx, cutoff), s=p.shape[1:])
    return out[:, pad:-pad, pad:-pad]


def test_frequency_kernels_have_the_butterworth_response() -> None:
    n = 256
    for cutoff in (0.05, 0.3):
        w = make_kernel(f"lowpass:{cutoff}", 2).taps.weights
        r = w.shape[0] // 2
        grid = np.zeros((n, n))
        grid[: 2 * r + 1, : 2 * r + 1] = w
        grid = np.roll(grid, (-r, -r), axis=(0, 1))  # centre at the origin
        got = np.fft.rfft2(grid)
        fy, fx = np.meshgrid(np.fft.fftfreq(n), np.fft.rfftfreq(n), indexing="ij")
        np.testing.assert_allclose(got.real, butterworth(fy, fx, cutoff), atol=1e-8)
        np.testing.assert_allclose(got.imag, 0, atol=1e-8)  # a symmetric kernel
        # Half power at the cutoff on the axes: the kernel's DTFT there, by direct sum.
        taps = np.arange(-r, r + 1)
        at_cutoff = np.sum(w * np.cos(2 * np.pi * cutoff * taps)[None, :])
        assert at_cutoff == pytest.approx(0.5, abs=1e-8)
    # Highpass is 1 - H, bandpass H(F2) - H(F1).
    w = make_kernel("highpass:0.1", 2).taps.weights
    r = w.shape[0] // 2
    taps = np.arange(-r, r + 1)
    for f in (0.0, 0.05, 0.1, 0.2, 0.45):
        got = np.sum(w * np.cos(2 * np.pi * f * taps)[None, :])
        assert got == pytest.approx(1 - butterworth(np.array(0.0), np.array(f), 0.1), abs=1e-8)
    w = make_kernel("bandpass:0.1,0.3", 2).taps.weights
    r = w.shape[0] // 2
    taps = np.arange(-r, r + 1)
    for f in (0.0, 0.05, 0.1, 0.2, 0.45):
        want = butterworth(np.array(0.0), np.array(f), 0.3) - butterworth(
            np.array(0.0), np.array(f), 0.1
        )
        got = np.sum(w * np.cos(2 * np.pi * f * taps)[None, :])
        assert got == pytest.approx(want, abs=1e-8)


@pytest.mark.parametrize("mode", ["reflect", "nearest", "constant"])
def test_frequency_filters_match_numpy_fft_filtering(mode) -> None:
    a = plane_data()
    ds = as_ds(a)
    pad = 128  # farther than any of these kernels reach (radius 48 px at F = 0.1)
    low1 = fft_lowpass_reference(a, 0.1, mode, pad)
    low3 = fft_lowpass_reference(a, 0.3, mode, pad)
    cases = [  # direct on the 35 x 35 kernel only: the 97 x 97 ones take seconds
        ("lowpass:0.3", "direct", low3),
        ("lowpass:0.3", "fft", low3),
        ("lowpass:0.1", "fft", low1),
        ("highpass:0.1", "fft", a - low1),
        ("bandpass:0.1,0.3", "fft", low3 - low1),
    ]
    for spec, method, ref in cases:
        out = filter_cube(ds, spec, method=method, mode=mode)["cube"].values
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-8, err_msg=f"{spec} {method}")


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("mode", ["reflect", "nearest", "constant"])
def test_spectral_axis_matches_convolve1d_along_band(method, mode) -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((7, 20, 24)) + 1.0
    for spec in ("gaussian:1", "box:4", "lowpass:0.2"):
        w = make_kernel(spec, 1).taps.weights  # lowpass: far longer than 7 bands
        out = filter_cube(as_ds(a, (7, 8, 12)), spec, axis="spectral", method=method, mode=mode)
        ref = ndi.convolve1d(a, w, axis=0, mode=mode)
        assert_rel(out["cube"].values, ref, 1e-6)


def test_nan_spreads_the_same_way_whichever_the_method(tmp_path) -> None:
    a = plane_data()
    a[1, 30:33, 40:42] = np.nan
    a[2, 0, 0] = np.inf
    k = ASYM.copy()
    k[0, 0] = 0.0  # a zero weight does not spread NaN (scipy.ndimage's rule)
    for spec, w in ((with_file_kernel(tmp_path, k), k), ("box:3", np.full((3, 3), 1 / 9))):
        ref = ndi.convolve(a, w[None], mode="reflect")
        bad = ~np.isfinite(ref)
        assert bad.any()
        for method in ("direct", "fft"):
            out = filter_cube(as_ds(a), spec, method=method)["cube"].values
            np.testing.assert_array_equal(np.isnan(out) | np.isinf(out), bad)
            assert_rel(out[~bad], ref[~bad], 1e-9)


def test_leading_image_dim_and_dtype_policy() -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, 3, 30, 40)).astype(np.float32)
    out = filter_cube(as_ds(a, (1, 3, 16, 16)), "gaussian:1.2")["cube"]
    assert out.dims == ("image", "band", "y", "x") and out.dtype == np.float32
    w = make_kernel("gaussian:1.2", 2).taps.weights
    assert_rel(out.values, ndi.convolve(a.astype(np.float64), w[None, None]), 1e-6)
    ints = as_ds(np.arange(3 * 8 * 8, dtype=np.int16).reshape(3, 8, 8), (3, 8, 8))
    assert filter_cube(ints, "box:3")["cube"].dtype == np.float32


def test_graph_building_computes_nothing_and_tasks_are_named(small_cube, no_compute) -> None:
    with no_compute:
        outs = [
            filter_cube(small_cube, "gaussian:2"),
            filter_cube(small_cube, "lowpass:0.1", mask_nan=True, fill=True),
            filter_cube(small_cube, "box:3", axis="spectral", method="fft"),
        ]
    for out in outs:
        arr = out["cube"].data
        assert arr.name.startswith("cubepipe-filter-")
        assert out["cube"].shape == small_cube["cube"].shape
        assert out["cube"].chunks is not None


KERNELS = ["gaussian:1.5", "box:4", "lowpass:0.2", "highpass:0.25", "file"]


@given(
    cy=st.integers(6, 96),
    cx=st.integers(6, 128),
    spec=st.sampled_from(KERNELS),
    method=st.sampled_from(["direct", "fft"]),
    mode=st.sampled_from(["reflect", "nearest", "constant"]),
    masked=st.booleans(),
    tile=st.sampled_from([2048, 17, 40]),
)
def test_chunked_equals_single_chunk(tmp_path, cy, cx, spec, method, mode, masked, tile) -> None:
    if spec == "file":
        spec = with_file_kernel(tmp_path, ASYM)
    a = plane_data(np.float32)
    a[:, 50:70, 10:30] = np.nan
    opts = {"method": method, "mode": mode, "mask_nan": masked}
    whole = filter_cube(as_ds(a, (3, 96, 128)), spec, **opts)["cube"].values
    chunked = filter_cube(as_ds(a, (3, cy, cx)), spec, fft_tile=tile, **opts)["cube"].values
    np.testing.assert_array_equal(np.isnan(chunked), np.isnan(whole))
    ok = ~np.isnan(whole)
    assert_rel(chunked[ok], whole[ok], 1e-6)
