"""One-pass float64 statistics: accuracy on offset data, chunking/scheduler invariance,
NaN and mask handling, and the number of times each input chunk is read."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given
from hypothesis import strategies as st

from cubepipe.pipeline.stats.fit import fit_stats, stats_from_json, stats_to_json
from cubepipe.storage import write_cube

from ..conftest import cube_chunk_reads


def _offset_cube(shape=(3, 300, 400), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.25, size=shape)
    x[0] += 4096.0
    x[1] += -4096.0
    x[2] += 4096.0 * 2
    return x.astype(np.float32)


def _ds(a: np.ndarray, chunks) -> xr.Dataset:
    return xr.Dataset({"cube": (("band", "y", "x"), da.from_array(a, chunks=chunks))})


def test_offset_data_means_and_stds_are_float64_exact() -> None:
    a = _offset_cube()
    ref = a.astype(np.float64)
    s = fit_stats(_ds(a, (3, 64, 80))).compute()
    mean_ref = ref.mean(axis=(1, 2))
    std_ref = ref.std(axis=(1, 2))
    np.testing.assert_allclose(s["stats_mean"].values, mean_ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(s["stats_std"].values, std_ref, rtol=1e-10, atol=0)
    np.testing.assert_array_equal(s["stats_min"].values, ref.min(axis=(1, 2)))
    np.testing.assert_array_equal(s["stats_max"].values, ref.max(axis=(1, 2)))
    assert s["stats_count"].dtype == np.int64
    assert s["stats_mean"].dtype == np.float64


def test_naive_float32_sum_of_squares_fails_on_the_same_data() -> None:
    a = _offset_cube()
    n = np.float32(a[0].size)
    s1 = a.sum(axis=(1, 2), dtype=np.float32)
    s2 = (a * a).sum(axis=(1, 2), dtype=np.float32)
    var_naive = s2 / n - (s1 / n) ** 2
    std_naive = np.sqrt(np.abs(var_naive))
    std_ref = a.astype(np.float64).std(axis=(1, 2))
    rel = np.abs(std_naive - std_ref) / std_ref
    assert rel.max() > 1.0  # the textbook formula is useless here...
    s = fit_stats(_ds(a, (3, 50, 50))).compute()
    assert np.max(np.abs(s["stats_std"].values - std_ref) / std_ref) < 1e-10  # ...ours is not


def test_nan_and_mask_are_left_out() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 30, 40)).astype(np.float32)
    a[0, :5] = np.nan
    mask = np.ones((30, 40), bool)
    mask[:, :10] = False
    ds = _ds(a, (2, 7, 9))
    ds["mask"] = (("y", "x"), mask)
    s = fit_stats(ds).compute()
    ref = np.where(mask, a.astype(np.float64), np.nan)
    np.testing.assert_allclose(s["stats_mean"].values, np.nanmean(ref, axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(s["stats_std"].values, np.nanstd(ref, axis=(1, 2)), rtol=1e-10)
    assert list(s["stats_count"].values) == [25 * 30, 30 * 30]


def test_all_invalid_band_has_count_zero_and_nan_stats() -> None:
    a = np.ones((2, 8, 8), np.float32)
    a[1] = np.nan
    s = fit_stats(_ds(a, (2, 4, 4))).compute()
    assert list(s["stats_count"].values) == [64, 0]
    assert np.isnan(s["stats_mean"].values[1]) and np.isnan(s["stats_std"].values[1])


def test_leading_dim_is_reduced_too() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(5, 2, size=(4, 3, 10, 12)).astype(np.float32)
    ds = xr.Dataset({"cube": (("frame", "band", "y", "x"), da.from_array(a, chunks=(1, 3, 5, 6)))})
    s = fit_stats(ds).compute()
    ref = a.astype(np.float64)
    np.testing.assert_allclose(s["stats_mean"].values, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(s["stats_std"].values, ref.std(axis=(0, 2, 3)), rtol=1e-10)


_DATA = _offset_cube((3, 40, 50), seed=3)
_DATA[1, 3:9, 4:20] = np.nan


def _numpy_stats(a: np.ndarray) -> dict[str, np.ndarray]:
    """The reference: two-pass float64 NumPy over each band's non-NaN values (ddof 0)."""
    ref = a.astype(np.float64)
    return {
        "stats_count": np.sum(~np.isnan(ref), axis=(1, 2)),
        "stats_mean": np.nanmean(ref, axis=(1, 2)),
        "stats_std": np.nanstd(ref, axis=(1, 2)),
        "stats_min": np.nanmin(ref, axis=(1, 2)),
        "stats_max": np.nanmax(ref, axis=(1, 2)),
    }


_REF = _numpy_stats(_DATA)


def _assert_matches_numpy(s: xr.Dataset) -> None:
    np.testing.assert_array_equal(s["stats_count"].values, _REF["stats_count"])
    np.testing.assert_allclose(s["stats_mean"].values, _REF["stats_mean"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(s["stats_std"].values, _REF["stats_std"], rtol=1e-10, atol=0)
    for k in ("stats_min", "stats_max"):
        np.testing.assert_array_equal(s[k].values, _REF[k])


@given(
    cy=st.integers(4, 40),
    cx=st.integers(4, 50),
    cb=st.integers(1, 3),
    split_every=st.sampled_from([None, 2, 3]),
    scheduler=st.sampled_from(["threads", "synchronous"]),
)
def test_same_statistics_for_every_chunking(cy, cx, cb, split_every, scheduler) -> None:
    with dask.config.set(scheduler=scheduler):
        s = fit_stats(_ds(_DATA, (cb, cy, cx)), split_every=split_every).compute()
    _assert_matches_numpy(s)


def test_same_statistics_on_a_distributed_local_cluster() -> None:
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as c,
        distributed.Client(c),
    ):
        for chunks in ((3, 7, 11), (1, 40, 5)):
            _assert_matches_numpy(fit_stats(_ds(_DATA, chunks), split_every=2).compute())


def test_fitting_builds_a_graph_without_computing(no_compute) -> None:
    with no_compute:
        s = fit_stats(_ds(_DATA, (3, 10, 10)))
        assert isinstance(s["stats_mean"].data, da.Array)
        names = {k[0] if isinstance(k, tuple) else k for k in s["stats_mean"].data.dask}
        assert any(str(n).startswith("cubepipe-stats-partial") for n in names)


def test_json_round_trip() -> None:
    d = stats_to_json(fit_stats(_ds(_DATA, (3, 40, 50))))
    assert d["ddof"] == 0 and [r["band"] for r in d["bands"]] == [0, 1, 2]
    for k in ("count", "mean", "std", "min", "max"):
        np.testing.assert_allclose(
            [r[k] for r in d["bands"]], _REF[f"stats_{k}"], rtol=1e-10, atol=0
        )
    again = stats_from_json(json.loads(json.dumps(d)))
    _assert_matches_numpy(again)


def test_stats_read_each_chunk_exactly_once(tmp_path: Path, counting_open) -> None:
    path = write_cube(_ds(_DATA, (3, 10, 10)), tmp_path / "in.zarr", chunks={"y": 10, "x": 10})
    ds, reads = counting_open(path)
    reads.clear()
    fit_stats(ds, split_every=2).compute()
    got = cube_chunk_reads(reads)
    n_chunks = zarr.open_array(str(path / "cube")).nchunks
    assert len(got) == n_chunks and set(got.values()) == {1}
