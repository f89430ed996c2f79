"""`--scheduler local --memory-limit` keeps a job on a cube several times the limit
within it: the measurement of benchmarks/bench_memory_limit.py, on a smaller cube."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from cubepipe.pipeline.scheduling import check_memory_limit
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import store_state, write_cube

from ..conftest import cubepipe_exe

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "_memory.py"

LIMIT = "500MB"
LIMIT_MIB = 500e6 / 2**20  # dask reads "500MB" as 500 * 10**6 bytes
#: The stated overhead (README, "Schedulers and memory"): what the main process (client,
#: scheduler, nanny) and multiprocessing's helper add on top of the per-worker limit.
OVERHEAD_MIB = 400


def _memory_module():  # noqa: ANN202 (benchmarks/_memory.py, loaded by path)
    pytest.importorskip("distributed")
    pytest.importorskip("psutil")
    spec = importlib.util.spec_from_file_location("cubepipe_bench_memory", _BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("text", ["1GB", "512MiB", "2e9", " 300 MB "])
def test_memory_limit_accepts_dask_sizes(text: str) -> None:
    assert check_memory_limit(text) == text.strip()


def test_a_bad_memory_limit_is_one_line_before_anything_starts(cli, small_store: Path) -> None:
    proc = cli("--memory-limit", "lots", "--scheduler", "local", "stats", str(small_store))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "cubepipe: error: --memory-limit: 'lots' is not a memory size such as 1GB, 512MiB "
        "or 2e9 (bytes)"
    )


@pytest.mark.slow
def test_worker_stays_under_the_memory_limit_on_a_cube_three_times_larger(
    tmp_path: Path,
) -> None:
    _memory = _memory_module()
    shape = (15, 5000, 5000)  # float32: 1.5 GB, 3.1 times the limit
    src = write_cube(make_cube(shape, seed=2), tmp_path / "in.zarr")
    res = _memory.run_sampled(
        [
            cubepipe_exe(),
            "--device",
            "cpu",
            "--scheduler",
            "local",
            "--workers",
            "1",
            "--memory-limit",
            LIMIT,
            "standardize",
            str(src),
            "-o",
            str(tmp_path / "z.zarr"),
        ],
        cwd=tmp_path,
        scratch=tmp_path / "dask-scratch",
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert store_state(tmp_path / "z.zarr") == "complete"
    report = res.as_row()
    assert len(res.worker_pids) == 1, report  # one worker, never restarted
    assert res.restarts == 0 and res.paused == 0, report
    assert res.spilled_peak_mb == 0, report
    assert 100 < res.worker_peak_mb < LIMIT_MIB, report
    assert res.tree_peak_mb < LIMIT_MIB + OVERHEAD_MIB, report
