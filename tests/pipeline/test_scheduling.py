"""The threaded scheduler's BLAS rule and the two-pass chunk budget (pipeline/scheduling.py)."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from threadpoolctl import threadpool_info

from cubepipe.pipeline.scheduling import (
    TWO_PASS_BYTES_PER_THREAD,
    keep_between_passes,
    scheduler,
)
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import write_cube
from cubepipe.storage.store import default_compressors


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def _in_task(block: np.ndarray) -> np.ndarray:
    return np.asarray(_blas_threads(), dtype=np.int64).reshape(1, -1)


@pytest.mark.skipif(not _blas_threads(), reason="no BLAS library loaded")
def test_threads_run_one_blas_thread_each_and_restore_it_after() -> None:
    before = _blas_threads()
    x = da.zeros((4, 4), chunks=(2, 4))
    with dask.config.set(num_workers=2), scheduler("threads"):
        seen = x.map_blocks(_in_task, dtype=np.int64, chunks=(1, len(before))).compute()
    assert set(seen.ravel().tolist()) == {1}
    assert _blas_threads() == before


def test_two_pass_budget_is_fixed_per_thread_and_off_for_big_chunks(tmp_path: Path) -> None:
    small = write_cube(make_cube((3, 64, 64), seed=0), tmp_path / "s.zarr")
    with dask.config.set(num_workers=2):
        keep = keep_between_passes("threads", small)
        assert 0 < keep <= 2 * TWO_PASS_BYTES_PER_THREAD
        assert keep_between_passes("local", small) == 0  # each worker re-reads
    with dask.config.set(num_workers=4):
        assert keep_between_passes("threads", small) == 2 * keep
    big = tmp_path / "b.zarr"  # metadata only: 64 MiB chunks, three per thread > 128 MiB
    zarr.create_group(str(big))
    zarr.create_array(
        str(big / "cube"), shape=(16, 2048, 2048), chunks=(16, 1024, 1024), dtype="f4",
        compressors=default_compressors(),
    )  # fmt: skip
    with dask.config.set(num_workers=2):
        assert keep_between_passes("threads", big) == 0
