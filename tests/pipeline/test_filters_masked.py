"""Masked (normalized) convolution against astropy, mask/fill/min_support semantics, and
CPU vs GPU."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi
import xarray as xr
from astropy.convolution import convolve, convolve_fft

from cubepipe.pipeline.backend import resolve_device, to_device, to_host
from cubepipe.pipeline.filters import FILTER_ATTR, filter_cube, make_kernel
from cubepipe.storage.errors import InputError

N = 64


def triangle_image(dtype=np.float32, bands: int = 2, seed: int = 0) -> np.ndarray:
    """Signed smooth structure + noise with the lower triangle (y > x) NaN: the users'
    case of a non-rectangular valid region."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:N, :N]
    base = np.sin(xx / 7.0) + np.cos(yy / 5.0) + 0.4
    a = base[None] + 0.2 * rng.standard_normal((bands, N, N))
    a[:, yy > xx] = np.nan
    return a.astype(dtype)


def lower_triangle_valid() -> np.ndarray:
    yy, xx = np.mgrid[:N, :N]
    return yy <= xx


def as_ds(a: np.ndarray, chunks=(2, 24, 20), mask: np.ndarray | None = None) -> xr.Dataset:
    ds = xr.Dataset({"cube": (("band", "y", "x"), da.from_array(a, chunks=chunks))})
    if mask is not None:
        ds["mask"] = (("y", "x"), mask)
    return ds


def astropy_interp(plane: np.ndarray, w: np.ndarray, preserve_nan: bool = True) -> np.ndarray:
    return convolve(
        plane.astype(np.float64),
        w,
        boundary="extend",
        nan_treatment="interpolate",
        normalize_kernel=True,
        preserve_nan=preserve_nan,
    )


def interior(r: int) -> tuple[slice, slice]:
    return (slice(r, N - r), slice(r, N - r))


def assert_rel(ours, ref, rel: float) -> None:
    np.testing.assert_allclose(ours, ref, rtol=rel, atol=rel * np.nanmax(np.abs(ref)))


ASYM = np.array([[1.0, 2, 0.5, 1, 3], [0, 1, 2, 4, 1], [2, 1, 3, 1, 1], [1, 1, 1, 0.2, 2]])


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("spec", ["gaussian:1.5", "box:5", "file", "lowpass:0.15"])
def test_masked_matches_astropy_interpolate_on_a_triangle(spec, method, tmp_path) -> None:
    if spec == "file":
        np.save(tmp_path / "k.npy", ASYM[:3])  # astropy wants odd sizes
        spec = f"file:{tmp_path / 'k.npy'}"
    a = triangle_image()
    w = make_kernel(spec, 2).taps.weights
    # mode="nearest" is astropy's boundary="extend": then edges must agree too.
    out = filter_cube(as_ds(a), spec, method=method, mode="nearest", mask_nan=True)["cube"]
    assert out.dtype == np.float32
    assert out.attrs[FILTER_ATTR]["masked"] is True
    inner = interior(0)
    valid = lower_triangle_valid()
    for b in range(a.shape[0]):
        got = out.values[b]
        ref = astropy_interp(a[b], w)
        assert np.isnan(got[~valid]).all()  # invalid input stays invalid
        ok = np.isfinite(got[inner])
        if not spec.startswith("lowpass"):
            np.testing.assert_array_equal(ok, valid[inner])  # and valid stays valid
        assert ok.sum() > 0.9 * valid[inner].sum()
        assert_rel(got[inner][ok], ref[inner][ok], 1e-5)


def test_store_mask_equals_nan_masking_and_is_carried() -> None:
    a = triangle_image()
    valid = lower_triangle_valid()
    garbage = np.where(valid, a, np.float32(3e38))  # masked values are never read
    by_nan = filter_cube(as_ds(a), "gaussian:2", mask_nan=True)
    by_mask = filter_cube(as_ds(garbage, mask=valid), "gaussian:2")
    np.testing.assert_array_equal(by_mask["cube"].values, by_nan["cube"].values)
    np.testing.assert_array_equal(by_mask["mask"].values, valid)
    filled = filter_cube(as_ds(garbage, mask=valid), "gaussian:2", fill=True)
    m = filled["mask"].values
    assert m.dtype == bool and (m >= valid).all() and (m > valid).any()
    np.testing.assert_array_equal(m, np.isfinite(filled["cube"].values).any(axis=0))


@pytest.mark.filterwarnings("ignore:nan_treatment='interpolate'")  # astropy: deep NaN stay
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_fill_estimates_supported_invalid_values(method) -> None:
    a = triangle_image(np.float64)
    w = make_kernel("gaussian:1.5", 2).taps.weights
    out = filter_cube(as_ds(a), "gaussian:1.5", method=method, mask_nan=True, fill=True)
    got = out["cube"].values[0]
    support = ndi.convolve(lower_triangle_valid().astype(float), w, mode="reflect")
    filled = ~lower_triangle_valid() & np.isfinite(got)
    assert filled.any() and np.isnan(got[support < 0.1 - 1e-9]).all()
    np.testing.assert_array_equal(np.isfinite(got), support >= 0.1 - 1e-12)
    ref = astropy_interp(a[0], w, preserve_nan=False)
    inner = interior(w.shape[0] // 2)
    sel = filled[inner]
    assert_rel(got[inner][sel], ref[inner][sel], 1e-5)


@pytest.mark.parametrize("mode", ["reflect", "nearest", "constant"])
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_constant_stays_constant_up_to_every_edge(mode, method) -> None:
    """Normalized convolution has no edge bias: a constant image (with its triangle
    hole) filters to the same constant at every valid pixel, image edges included."""
    a = np.full((1, N, N), 7.25, np.float32)
    a[:, ~lower_triangle_valid()] = np.nan
    got = filter_cube(as_ds(a, (1, 24, 20)), "gaussian:3", method=method, mode=mode, mask_nan=True)
    v = got["cube"].values
    np.testing.assert_allclose(v[np.isfinite(v)], 7.25, rtol=1e-6)
    assert np.isfinite(v).sum() == lower_triangle_valid().sum()


def test_astropy_default_zero_fill_biases_edges_ours_does_not() -> None:
    a = np.full((N, N), 7.25)
    a[~lower_triangle_valid()] = np.nan
    w = make_kernel("gaussian:3", 2).taps.weights
    theirs = convolve_fft(a, w)  # default: boundary="fill", fill_value=0
    ours = filter_cube(as_ds(a[None], (1, 32, 32)), "gaussian:3", mask_nan=True)["cube"]
    v = ours.values[0]
    valid = lower_triangle_valid()
    assert np.nanmax(np.abs(theirs[valid] - 7.25)) > 1.0
    assert np.nanmax(np.abs(v[valid] - 7.25)) < 1e-5


def test_min_support_decides_validity_at_corners() -> None:
    a = np.random.default_rng(2).standard_normal((1, N, N)) + 2.0
    w = make_kernel("gaussian:2", 2).taps.weights
    support = ndi.convolve(np.ones((N, N)), w, mode="constant")  # outside is invalid
    for min_support in (0.2, 0.4, 0.5, 0.9):
        got = filter_cube(as_ds(a, (1, 30, 30)), "gaussian:2", mode="constant",
                          mask_nan=True, min_support=min_support)["cube"].values[0]  # fmt: skip
        clear = np.abs(support - min_support) > 1e-9
        np.testing.assert_array_equal(np.isfinite(got)[clear], (support >= min_support)[clear])
    assert support[0, 0] < 0.4 < support[N // 2, 0] < 0.9


def test_per_band_nan_patterns_and_multi_term_filters() -> None:
    a = triangle_image(np.float64, bands=3)
    a[1, 10:20, 40:50] = np.nan
    a[2] = np.where(np.isnan(a[2]), 1.0, a[2])  # band 2: no NaN at all
    out = filter_cube(as_ds(a, (3, 24, 20)), "box:5", mask_nan=True)["cube"].values
    w = np.full((5, 5), 1 / 25)
    inner = interior(2)
    for b in range(3):
        ref = astropy_interp(a[b], w)
        ok = np.isfinite(out[b][inner])
        assert_rel(out[b][inner][ok], ref[inner][ok], 1e-9)
    # highpass = x - normalized lowpass; bandpass = difference of normalized lowpasses.
    ds = as_ds(a, (3, 24, 20))
    low = filter_cube(ds, "lowpass:0.2", mask_nan=True)["cube"].values
    high = filter_cube(ds, "highpass:0.2", mask_nan=True)["cube"].values
    np.testing.assert_allclose(high, a - low, atol=1e-12)
    low4 = filter_cube(ds, "lowpass:0.4", mask_nan=True)["cube"].values
    band = filter_cube(ds, "bandpass:0.2,0.4", mask_nan=True)["cube"].values
    np.testing.assert_allclose(band, low4 - low, atol=1e-12)


def test_spectral_masked_matches_astropy_1d() -> None:
    rng = np.random.default_rng(4)
    a = rng.standard_normal((15, 6, 7)) + 3.0
    a[3:5, 2, 3] = np.nan
    a[:, 0, 0] = np.nan
    out = filter_cube(as_ds(a, (15, 6, 7)), "gaussian:1.2", axis="spectral", mask_nan=True)
    v = out["cube"].values
    w = make_kernel("gaussian:1.2", 1).taps.weights
    for y, x in ((2, 3), (1, 1)):
        ref = astropy_interp(a[:, y, x], w)
        r = w.size // 2
        assert_rel(v[r:-r, y, x], ref[r:-r], 1e-9)
    assert np.isnan(v[:, 0, 0]).all()


def test_nan_on_valid_mask_pixels_spreads_without_mask_nan() -> None:
    a = triangle_image(np.float64)
    valid = lower_triangle_valid()
    a[:, valid] = np.nan_to_num(a[:, valid])
    a[0, 5, 40] = np.nan  # a NaN the mask says is valid
    outs = [
        filter_cube(as_ds(a, mask=valid), "gaussian:1", method=m)["cube"].values
        for m in ("direct", "fft")
    ]
    np.testing.assert_array_equal(np.isnan(outs[0]), np.isnan(outs[1]))
    assert np.isnan(outs[0][0, 3:8, 38:43]).all() and np.isfinite(outs[0][1, 3:8, 38:43]).all()
    ok = np.isfinite(outs[0])
    np.testing.assert_allclose(outs[0][ok], outs[1][ok], rtol=1e-9, atol=1e-12)


def test_zero_sum_kernel_cannot_be_normalized(tmp_path) -> None:
    np.save(tmp_path / "lap.npy", np.array([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]))
    spec = f"file:{tmp_path / 'lap.npy'}"
    a = triangle_image()
    with pytest.raises(InputError, match="sums to 0"):
        filter_cube(as_ds(a), spec, mask_nan=True)
    filter_cube(as_ds(a), spec)  # unmasked is fine


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("spec", "opts"),
    [
        ("gaussian:2", {}),
        ("gaussian:2", {"method": "fft"}),
        ("box:4", {"mask_nan": True}),
        ("gaussian:2", {"mask_nan": True, "method": "fft", "fill": True}),
        ("lowpass:0.15", {"mask_nan": True, "mode": "constant"}),
        ("highpass:0.2", {"mode": "nearest"}),
        ("gaussian:1", {"axis": "spectral", "mask_nan": True}),
        ("lowpass:0.2", {"axis": "spectral", "method": "fft"}),
    ],
)
def test_cpu_and_gpu_agree(spec, opts) -> None:
    a = triangle_image(bands=3)
    ds = as_ds(a, (3, 24, 20), mask=lower_triangle_valid() | (np.arange(N) < 8)[:, None])
    cpu = filter_cube(ds, spec, **opts)["cube"]
    gpu = filter_cube(to_device(ds, resolve_device("gpu")), spec, **opts)["cube"]
    assert type(gpu.data._meta).__module__.startswith("cupy")
    got = to_host(gpu.data).compute()
    ref = cpu.values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    ok = np.isfinite(ref)
    assert_rel(got[ok], ref[ok], 1e-5)
