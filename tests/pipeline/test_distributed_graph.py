"""The graphs standardize and compress run on ``--scheduler local`` (a LocalCluster of
two worker processes): the same bits as the threaded scheduler, a few tasks per chunk,
no chunk moved between workers, fitted results carried in bytes, and workers that start
as copies of this process with one BLAS thread each (issue 19, build item 6)."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest

from cubepipe.pipeline.compression.api import prepare_compress
from cubepipe.pipeline.compression.pca import pca_encode
from cubepipe.pipeline.scheduling import WORKER_START_ENV, local_cluster, scheduler
from cubepipe.pipeline.scheduling import worker_start_method as start_method
from cubepipe.pipeline.stats.standardize import standardize
from cubepipe.storage import open_cube, write_cube
from cubepipe.storage.errors import InputError
from cubepipe.storage.store import history, read_attrs

distributed = pytest.importorskip("distributed")

CHUNKS = {"y": 64, "x": 96}  # small_store's: the outputs keep them (no merge on write)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with local_cluster(workers=2, dashboard=False) as c:
        yield c


def _incoming(dask_worker: Any = None) -> list[int]:
    return [int(t["total"]) for t in dask_worker.transfer_incoming_log]


def _on_cluster(client: Any, run: Any) -> tuple[int, list[int]]:
    """Run ``run()`` on the cluster; (tasks it ran, sizes of what workers fetched)."""
    before = client.run(_incoming)
    with dask.config.set(scheduler=client), distributed.get_task_stream(client) as ts:
        run()
    after = client.run(_incoming)
    fetched = [n for w, log in after.items() for n in log[len(before.get(w, [])) :]]
    return len(ts.data), fetched


def test_worker_start_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKER_START_ENV, raising=False)
    assert start_method() in ("fork", "spawn")
    monkeypatch.setenv(WORKER_START_ENV, " Spawn ")
    assert start_method() == "spawn"
    monkeypatch.setenv(WORKER_START_ENV, "thread")
    with pytest.raises(InputError, match="expected fork, spawn or forkserver"):
        start_method()


def test_workers_run_one_blas_thread_and_no_profiler(client: Any) -> None:
    def blas() -> list[int]:
        from threadpoolctl import threadpool_info  # noqa: PLC0415

        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    got = client.run(blas)
    assert len(got) == 2
    assert all(threads and set(threads) == {1} for threads in got.values()), got
    profiling = client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    assert set(profiling.values()) == {False}


def test_standardize_on_a_cluster_is_the_threaded_result(
    client: Any, small_store: Path, tmp_path: Path
) -> None:
    with scheduler("threads"):
        write_cube(standardize(open_cube(small_store)), tmp_path / "t.zarr", chunks=CHUNKS)

    def run() -> None:
        write_cube(standardize(open_cube(small_store)), tmp_path / "d.zarr", chunks=CHUNKS)

    tasks, fetched = _on_cluster(client, run)
    a, b = open_cube(tmp_path / "t.zarr"), open_cube(tmp_path / "d.zarr")
    assert np.isnan(b["cube"].values).any() and np.isfinite(b["cube"].values).any()
    for name in ("cube", "stats_mean", "stats_std", "stats_count"):
        np.testing.assert_array_equal(a[name].values, b[name].values)  # bit for bit
    chunks = int(np.prod(open_cube(small_store)["cube"].data.numblocks))
    # One task per chunk for the fit, one (read, apply, write) for the output, and a
    # fixed number for the reduction and the small variables.
    assert tasks <= 2 * chunks + 40, tasks
    # Only per-chunk statistics (15 bands x 5 float64) travel; never a chunk (368 kB).
    assert max(fetched, default=0) < 16 * 2**10, fetched


def test_compress_on_a_cluster_is_the_threaded_result(
    client: Any, small_store: Path, tmp_path: Path
) -> None:
    with scheduler("threads"):
        prepare_compress(open_cube(small_store), components=3).write(
            tmp_path / "t.zarr", chunks=CHUNKS
        )

    def run() -> None:
        prepare_compress(open_cube(small_store), components=3).write(
            tmp_path / "d.zarr", chunks=CHUNKS
        )

    tasks, fetched = _on_cluster(client, run)
    a, b = open_cube(tmp_path / "t.zarr"), open_cube(tmp_path / "d.zarr")
    assert np.isfinite(b["scores"].values).any()
    for name in ("scores", "pca_components", "pca_mean", "pca_explained_variance"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    results = [
        history(read_attrs(p))[-1]["results"] for p in (tmp_path / "t.zarr", tmp_path / "d.zarr")
    ]
    assert results[0] == results[1]  # RMSE, PSNR, spectral angle: the same sums
    chunks = int(np.prod(open_cube(small_store)["cube"].data.numblocks))
    # Per chunk: the co-moment fit, the projection, its scores' write, its error sums.
    assert tasks <= 4 * chunks + 40, tasks
    assert max(fetched, default=0) < 16 * 2**10, fetched  # co-moments (15 x 22 float64)


def test_each_task_carries_bytes_of_fitted_results_not_chunks(small_store: Path) -> None:
    """The fitted statistics and PCA model ride in each task as a few small float64
    vectors (O(bands)); dask puts any argument over 1 MB into the graph once, as its
    own key (``dask.array.core.normalize_arg``), which a worker fetches once."""
    ds = open_cube(small_store)
    with scheduler("threads"):
        z = standardize(ds)["cube"].data
        job = prepare_compress(ds, components=3)
    scores, _ = pca_encode(ds, job.dataset)
    for arr in (z, scores.data):
        graph = dict(arr.__dask_graph__())
        sizes = [len(pickle.dumps(t, protocol=5)) for t in graph.values()]
        assert max(sizes) < 4 * 2**10, max(sizes)


def test_the_dashboard_comes_up_after_the_cluster_and_quiet_takes_no_fixed_port() -> None:
    import urllib.request  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with local_cluster(workers=1, dashboard=True) as c:
            status, deadline = 0, time.monotonic() + 60
            while status != 200 and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(c.dashboard_link, timeout=10) as page:
                        status, body = page.status, page.read()
                except OSError:
                    time.sleep(0.2)
            assert status == 200 and b"bokeh" in body.lower()
            with local_cluster(workers=1, dashboard=False) as quiet:
                assert quiet.dashboard_link != c.dashboard_link
    assert not [w for w in seen if "already in use" in str(w.message)]
