"""Standardization: exact inverse, unit statistics, NaN/constant/all-invalid bands,
re-application of saved statistics to other stores and streams, and the read budget."""

from __future__ import annotations

import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from cubepipe.pipeline.stats.fit import fit_stats, stats_from_json, stats_to_json
from cubepipe.pipeline.stats.standardize import destandardize, iter_standardized, standardize
from cubepipe.storage import CubepipeWarning, InputError, open_cube, write_cube

from ..conftest import cube_chunk_reads


def _ds(a: np.ndarray, chunks) -> xr.Dataset:
    dims = ("band", "y", "x") if a.ndim == 3 else ("frame", "band", "y", "x")
    return xr.Dataset({"cube": (dims, da.from_array(a, chunks=chunks))})


@pytest.fixture
def data() -> np.ndarray:
    rng = np.random.default_rng(4)
    a = (rng.normal(0, 1, size=(4, 60, 70)) * [[[3.0]], [[0.01]], [[250.0]], [[1.0]]]).astype(
        np.float32
    )
    a += np.array([1000.0, -5.0, 0.0, -4096.0], dtype=np.float32)[:, None, None]
    a[:, 10:20, 30:40] = np.nan
    return a


def test_zscore_has_unit_statistics_and_inverts(data: np.ndarray) -> None:
    z = standardize(_ds(data, (4, 16, 16)))
    v = z["cube"].values
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.nanmean(v.astype(np.float64), axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(np.nanstd(v.astype(np.float64), axis=(1, 2)), 1, atol=1e-5)
    assert np.array_equal(np.isnan(v), np.isnan(data))  # NaN stays NaN, nothing else is
    back = destandardize(z)["cube"].values
    assert back.dtype == np.float32
    # Within float32 rounding of the original magnitude.
    err = np.abs(back.astype(np.float64) - data)
    tol = (
        4 * np.finfo(np.float32).eps * (np.abs(data) + np.nanstd(data, axis=(1, 2))[:, None, None])
    )
    assert np.all((err <= tol) | np.isnan(data))


def test_minmax_maps_to_unit_interval(data: np.ndarray) -> None:
    v = standardize(_ds(data, (4, 30, 30)), method="minmax")["cube"].values
    assert np.nanmin(v) == pytest.approx(0, abs=1e-7)
    assert np.nanmax(v) == pytest.approx(1, abs=1e-6)
    back = destandardize(standardize(_ds(data, (4, 30, 30)), method="minmax"))["cube"].values
    np.testing.assert_allclose(back, data, rtol=1e-6, atol=1e-3)


def test_constant_band_gives_zero_and_a_warning() -> None:
    a = np.random.default_rng(0).normal(size=(2, 10, 10)).astype(np.float32)
    a[1] = 7.5
    with pytest.warns(CubepipeWarning, match="zero spread"):
        v = standardize(_ds(a, (2, 5, 5)))["cube"].values
    assert np.isfinite(v).all()
    assert np.all(v[1] == 0)


def test_all_invalid_band_is_an_error_naming_it() -> None:
    a = np.ones((3, 6, 6), np.float32)
    a[2] = np.nan
    ds = _ds(a, (3, 3, 3)).assign_coords(wavelength=("band", [450.0, 550.0, 650.0]))
    with pytest.raises(InputError, match=r"band 2 .*650 nm.* no valid values"):
        standardize(ds)


def test_output_carries_its_statistics_and_mask(data: np.ndarray, tmp_path: Path) -> None:
    ds = _ds(data, (4, 20, 20))
    ds["mask"] = (("y", "x"), np.ones((60, 70), bool))
    path = write_cube(standardize(ds), tmp_path / "z.zarr")
    z = open_cube(path)
    assert {"stats_mean", "stats_std", "stats_count", "mask"} <= set(z.data_vars)
    assert z["stats_mean"].dtype == np.float64
    assert z["cube"].attrs["cubepipe_standardized"] == "zscore"
    np.testing.assert_allclose(
        destandardize(z)["cube"].values, data, rtol=1e-6, atol=1e-3 * np.nanstd(data)
    )


def test_saved_statistics_reapply_to_another_store_and_a_stream(
    data: np.ndarray, tmp_path: Path
) -> None:
    stats = fit_stats(_ds(data, (4, 20, 20))).compute()
    stats = stats_from_json(stats_to_json(stats))  # as if shipped beside a model
    mean, std = stats["stats_mean"].values, stats["stats_std"].values
    rng = np.random.default_rng(9)
    new = (data[:, :30, :30] + rng.normal(0, 1, size=(4, 30, 30))).astype(np.float32)
    by_hand = ((new.astype(np.float64) - mean[:, None, None]) / std[:, None, None]).astype(
        np.float32
    )
    path = write_cube(standardize(_ds(new, (4, 10, 10)), stats), tmp_path / "new.zarr")
    np.testing.assert_array_equal(open_cube(path)["cube"].values, by_hand)

    frames = np.stack([new, new * 2, new - 1])  # (frame, band, y, x)
    got = list(iter_standardized(_ds(frames, (1, 4, 30, 30)), stats))
    assert len(got) == 3
    for f, g in zip(frames, got, strict=True):
        expected = ((f.astype(np.float64) - mean[:, None, None]) / std[:, None, None]).astype(
            np.float32
        )
        np.testing.assert_array_equal(g, expected)
    plain = list(iter_standardized(iter(frames), stats))
    np.testing.assert_array_equal(plain[1], got[1])
    with pytest.raises(InputError, match="frame 0"):
        next(iter_standardized([np.ones((3, 2, 2))], stats))


def test_fit_and_apply_reads_each_chunk_at_most_twice(
    data: np.ndarray, tmp_path: Path, counting_open
) -> None:
    path = write_cube(_ds(data, (4, 20, 20)), tmp_path / "in.zarr", chunks={"y": 20, "x": 20})
    ds, reads = counting_open(path)
    reads.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_cube(standardize(ds), tmp_path / "out.zarr")
    got = cube_chunk_reads(reads)
    assert len(got) == 12 and max(got.values()) <= 2


def test_applying_given_statistics_builds_graph_without_computing(
    data: np.ndarray, no_compute
) -> None:
    stats = fit_stats(_ds(data, (4, 20, 20))).compute()
    with no_compute:
        z = standardize(_ds(data, (4, 20, 20)), stats)
        assert isinstance(z["cube"].data, da.Array)


def test_saved_statistics_reapply_to_a_real_video_stream(tmp_path: Path) -> None:
    """The users' case: statistics fitted on stored images, applied later to video frames
    streamed one at a time (lossless FFV1 so the decoded values are known exactly)."""
    pytest.importorskip("av")
    from cubepipe.storage.ingest import open_input  # noqa: PLC0415

    from ..storage.test_video import moving_pattern, write_video  # noqa: PLC0415

    frames = moving_pattern(12, smooth=True)  # (frame, y, x, 3) uint8
    video = write_video(tmp_path / "clip.mkv", frames, codec="ffv1", pix_fmt="bgr0")
    train = frames[:4].transpose(0, 3, 1, 2).astype(np.float32)
    stats = fit_stats(_ds(train, (1, 3, 48, 64))).compute()
    path = write_cube(standardize(_ds(train, (1, 3, 48, 64)), stats), tmp_path / "train.zarr")
    saved = open_cube(path)  # the statistics travel with the standardized data
    mean, std = saved["stats_mean"].values, saved["stats_std"].values
    got = list(iter_standardized(open_input(video), saved))
    assert len(got) == 12
    for frame, out in zip(frames, got, strict=True):
        x = frame.transpose(2, 0, 1).astype(np.float64)
        by_hand = ((x - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
        np.testing.assert_array_equal(out, by_hand)


def test_zscore_of_wide_chunks_is_the_float64_result_rounded_once() -> None:
    """Chunks of many strips, large offsets, a NaN disc, a read-only input (as kept chunks
    are): each value within one float32 rounding of NumPy's float64 ``(x - mean) / std``
    (the kernel multiplies by ``1 / std``: at most one float64 ulp away before rounding)."""
    rng = np.random.default_rng(11)
    a = rng.normal(size=(15, 150, 400)) * rng.uniform(0.01, 500, size=(15, 1, 1))
    a = (a + rng.uniform(-1e5, 1e5, size=(15, 1, 1))).astype(np.float32)
    yy, xx = np.ogrid[:150, :400]
    a[:, (yy - 70) ** 2 + (xx - 90) ** 2 < 30**2] = np.nan
    a.flags.writeable = False
    z = standardize(_ds(a, (15, 150, 400)))["cube"].values
    x64 = a.astype(np.float64)
    want = (x64 - np.nanmean(x64, axis=(1, 2), keepdims=True)) / np.nanstd(
        x64, axis=(1, 2), keepdims=True
    )
    assert z.dtype == np.float32
    assert np.array_equal(np.isnan(z), np.isnan(a))
    ok = ~np.isnan(a)
    err = np.abs(z[ok].astype(np.float64) - want[ok])
    # one float32 rounding of the result, plus the statistics' float64 error (tiny)
    assert np.all(err <= np.spacing(np.abs(want[ok]).astype(np.float32)) + 1e-9)
    back = destandardize(standardize(_ds(a, (15, 50, 128))))["cube"].values
    tol = 4 * np.finfo(np.float32).eps * (np.abs(x64) + np.nanstd(x64, axis=(1, 2), keepdims=True))
    assert np.all((np.abs(back - x64) <= tol) | np.isnan(a))


def test_kept_chunk_budget_follows_available_memory(tmp_path: Path) -> None:
    """The budget of ``cubepipe standardize`` (pipeline/scheduling.keep_between_passes):
    fixed per thread, an eighth of the available memory when that is less, never
    negative, nothing off the threaded scheduler."""
    import dask  # noqa: PLC0415

    from cubepipe.pipeline.scheduling import (  # noqa: PLC0415
        TWO_PASS_BYTES_PER_THREAD,
        keep_between_passes,
    )

    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 40, 40)).astype(np.float32)
    store = write_cube(_ds(a, (3, 20, 20)), tmp_path / "s.zarr", chunks={"y": 20, "x": 20})
    chunk = 3 * 20 * 20 * 4
    with dask.config.set(num_workers=2):
        fixed = 2 * (TWO_PASS_BYTES_PER_THREAD - 4 * chunk)
        assert keep_between_passes("threads", store, available=2**40) == fixed
        assert keep_between_passes("threads", store, available=80 * 2**20) == 10 * 2**20
        assert keep_between_passes("threads", store, available=0) == 0
        assert keep_between_passes("threads", store, available=-5) == 0  # hostile: clamped
        assert 0 <= keep_between_passes("threads", store) <= fixed  # what the system says
        assert keep_between_passes("local", store, available=2**40) == 0


def test_budget_a_machine_short_of_memory_still_standardizes(tmp_path: Path) -> None:
    """A tiny budget (one chunk) kept while two threads read concurrently: the result is
    the same as keeping nothing, every value from the independent reference."""
    import dask  # noqa: PLC0415

    from cubepipe.pipeline.scheduling import keep_between_passes, scheduler  # noqa: PLC0415

    rng = np.random.default_rng(5)
    a = (rng.normal(size=(4, 96, 96)) * 7 + 40).astype(np.float32)
    store = write_cube(_ds(a, (4, 32, 32)), tmp_path / "s.zarr", chunks={"y": 32, "x": 32})
    with dask.config.set(num_workers=2):
        keep = keep_between_passes("threads", store, available=8 * (4 * 32 * 32 * 4))
    assert keep == 4 * 32 * 32 * 4  # one chunk of nine
    with dask.config.set(num_workers=2), scheduler("threads"):
        kept = standardize(open_cube(store, keep_bytes=keep))["cube"].values
        none = standardize(open_cube(store))["cube"].values
    x64 = a.astype(np.float64)
    want = (x64 - x64.mean(axis=(1, 2), keepdims=True)) / x64.std(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(kept, none)
    assert np.all(np.abs(kept - want) <= np.spacing(np.abs(want).astype(np.float32)) + 1e-9)


def test_cli_says_its_kept_chunk_budget_and_help_states_the_rule(cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a = (rng.normal(size=(3, 64, 64)) * 2 + 9).astype(np.float32)
    store = write_cube(_ds(a, (3, 32, 32)), tmp_path / "in.zarr", chunks={"y": 32, "x": 32})
    r = cli("standardize", str(store), "-o", str(tmp_path / "out.zarr"))
    assert r.returncode == 0, r.stderr
    assert "keeping up to " in r.stderr and "available memory / 8" in r.stderr
    x64 = a.astype(np.float64)
    want = (x64 - x64.mean(axis=(1, 2), keepdims=True)) / x64.std(axis=(1, 2), keepdims=True)
    got = open_cube(tmp_path / "out.zarr")["cube"].values
    assert np.all(np.abs(got - want) <= np.spacing(np.abs(want).astype(np.float32)) + 1e-9)
    helped = cli("standardize", "--help")
    assert "available memory / 8" in " ".join(helped.stdout.split())
