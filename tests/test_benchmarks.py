"""Every benchmark script still runs (tiny size, no timing asserted, no files written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


#: bench_memory_limit.py --quick starts a cluster for each of its four cases (~80 s); its
#: scenario (a local cluster under --memory-limit, measured by benchmarks/_memory.py) runs
#: once, on a cube larger than the worker's free memory, in tests/cli/test_memory_limit.py.
SCRIPTS = sorted(p for p in BENCH.glob("bench_*.py") if p.stem != "bench_memory_limit")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_runs_quick(script: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x 1.00 of" in proc.stdout  # the baseline ran beside our code
