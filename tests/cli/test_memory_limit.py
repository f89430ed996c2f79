"""`--scheduler local --memory-limit` keeps a job on a cube larger than the worker's
free memory within it: the measurement of benchmarks/bench_memory_limit.py (which runs
a 4 GB cube under a 1GB limit), on a cube small enough for `make test`.

This is the suite's one run of that scenario: tests/test_benchmarks.py leaves
bench_memory_limit.py out (its --quick run started four clusters on a tiny cube).
"""

from __future__ import annotations

import importlib.util
import sys
import time
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


def _memory_module():
    pytest.importorskip("distributed")
    psutil = pytest.importorskip("psutil")
    spec = importlib.util.spec_from_file_location("cubepipe_bench_memory", _BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    role = module._role

    def settled_role(proc, root: int) -> str:
        # A child seen between fork and exec still shows the parent's command line; the
        # first look decides a process's role for the whole run, so wait for the exec.
        # (benchmarks/_memory.py's _role should do this itself.)
        parent = psutil.Process(root).cmdline()
        for _ in range(50):
            found = role(proc, root)
            try:
                if found != "helper" or proc.cmdline() != parent:
                    return found
            except psutil.Error:
                return "gone"
            time.sleep(0.01)
        return found

    module._role = settled_role
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


def test_worker_stays_under_the_memory_limit_on_a_cube_larger_than_its_free_memory(
    tmp_path: Path,
) -> None:
    _memory = _memory_module()
    # float32: 393 MB (375 MiB), 25 chunks of 15 x 512 x 512. A worker idles at ~170 MiB
    # and dask pauses it at 80% of the 477 MiB limit (381 MiB): one holding the cube, or
    # a copy of it, would pause, spill or be restarted.
    shape = (15, 2560, 2560)
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
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert store_state(tmp_path / "z.zarr") == "complete"
    report = res.as_row()
    assert len(res.worker_pids) == 1, report  # one worker, never restarted
    assert res.restarts == 0 and res.paused == 0, report
    # No chunk is spilled (one is 15.7 MB). When the worker's unmanaged memory (interpreter,
    # libraries, allocator caches) passes dask's 60% target, dask moves its few managed
    # keys to disk: here the per-chunk statistics and write receipts, < 1 KB each.
    assert res.spilled_peak_mb < 1, report
    assert 100 < res.worker_peak_mb < LIMIT_MIB, report
    assert res.tree_peak_mb < LIMIT_MIB + OVERHEAD_MIB, report
