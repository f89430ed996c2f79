"""Every benchmark script still runs (tiny size, no timing asserted, no files written)."""

from __future__ import annotations

import json
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


def _beyond_ram(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / "bench_beyond_ram.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_beyond_ram_smoke_writes_tables_and_deletes_its_cubes(tmp_path: Path) -> None:
    """A tiny run of the beyond-RAM mode (one command): its tables and a goal row come
    back, and every cube and output it made is gone."""
    work, results = tmp_path / "work", tmp_path / "results"
    proc = _beyond_ram(
        "--quick", "--command", "standardize", "--dir", str(work), "--results-dir", str(results)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(work.iterdir()) == []  # the cubes and outputs are deleted
    rows = json.loads((results / "bench_beyond_ram.json").read_text())["rows"]
    assert [(r["cube"], r["command"]) for r in rows] == [
        ("1x", "standardize"),
        ("big", "standardize"),
    ]
    assert [r["shape"] for r in rows] == ["15x64x64", "15x408x408"]  # 0.01 GB of float32
    assert all(r["peak_rss_mb"] > 0 and r["seconds"] > 0 for r in rows)
    assert "| standardize |" in (results / "bench_beyond_ram.md").read_text()


def test_beyond_ram_refuses_without_disk_space(tmp_path: Path) -> None:
    proc = _beyond_ram("--size-gb", "1e6", "--dir", str(tmp_path))
    assert proc.returncode != 0
    assert "not enough disk space" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was built


def test_startup_bench_prints_its_goal_rows() -> None:
    """bench_startup --quick on two cases (the baseline runs too): the goal rows of issue
    19 item 5 are printed for them; nothing is written (a subset of cases)."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_startup.py"), "--quick"]
        + ["--case", "version", "--case", "help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x 1.00 of python" in proc.stdout
    assert "- `cubepipe --version`: " in proc.stdout and "(goal < 1 s: " in proc.stdout
    assert "- `cubepipe --help`: " in proc.stdout
