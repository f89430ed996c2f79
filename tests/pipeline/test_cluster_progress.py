"""Progress on a dask.distributed cluster: polled from the scheduler, printed with the
threaded rules (plain lines every interval off a terminal, and a last 100% line)."""

from __future__ import annotations

import io
import re
import time

import dask
import pytest

from cubepipe.pipeline.progress import ClusterProgress

distributed = pytest.importorskip("distributed")


def _slow(i: int) -> int:
    time.sleep(0.15)
    return i


def test_cluster_progress_reports_the_work_as_it_goes() -> None:
    out = io.StringIO()
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        tasks = [dask.delayed(_slow)(i) for i in range(16)]
        with ClusterProgress(client, "toy", stream=out, interval=0.3):
            assert sum(dask.compute(*tasks)) == sum(range(16))
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("cubepipe: toy 100% (")
    fractions = [int(m.group(1)) for m in map(re.compile(r"toy (\d+)%").search, lines) if m]
    assert len(fractions) >= 3, lines  # ~2.4 s of work, a line every 0.3 s
    assert fractions == sorted(fractions) and fractions[0] < 100
