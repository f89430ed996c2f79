"""Every benchmark script still runs (tiny size, no timing asserted, no files written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(BENCH.glob("bench_*.py")), ids=lambda p: p.stem)
def test_benchmark_runs_quick(script: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x 1.00 of" in proc.stdout  # the baseline ran beside our code
