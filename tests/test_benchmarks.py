"""Every benchmark script still runs (tiny size, no timing asserted, no files written)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from cubepipe.storage.store import default_compressors

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


@pytest.mark.parametrize("codec", ["zstd", "blosc-crc32c", "default"])
def test_floor_case_decodes_every_chunk_as_zarr_does(tmp_path: Path, codec: str) -> None:
    """_common.floor_case's codec chain (numcodecs, from zarr.json) against zarr-python's
    own reading of the same chunks; it decodes every chunk ``reads`` times and encodes
    exactly ``out_bytes``."""
    sys.path.insert(0, str(BENCH))
    _common = importlib.import_module("_common")
    compressors: Any = {
        "zstd": [ZstdCodec(level=3, checksum=True)],
        "blosc-crc32c": [BloscCodec(cname="lz4", shuffle="shuffle"), Crc32cCodec()],
        "default": default_compressors(),
    }[codec]
    rng = np.random.default_rng(0)
    data = rng.standard_normal((3, 40, 50)).astype(np.float32)
    z = zarr.create_array(
        tmp_path / "a.zarr", shape=data.shape, chunks=(3, 16, 16), dtype="float32",
        compressors=compressors,
    )  # fmt: skip
    z[...] = data
    meta = json.loads((tmp_path / "a.zarr" / "zarr.json").read_text())
    codecs = _common._bytes_codecs(meta["codecs"], "test")
    files = _common._chunk_files(tmp_path / "a.zarr")
    assert len(files) == 3 * 4  # 40 / 16 -> 3, 50 / 16 -> 4
    for f in files:
        i, j = (int(v) for v in f.relative_to(tmp_path / "a.zarr" / "c").parts[1:])
        buf: Any = f.read_bytes()
        for c in reversed(codecs):
            buf = c.decode(buf)
        part = z[:, i * 16 : (i + 1) * 16, j * 16 : (j + 1) * 16]  # edge chunks: padded
        got = np.frombuffer(buf, np.float32).reshape(3, 16, 16)
        np.testing.assert_array_equal(got[:, : part.shape[1], : part.shape[2]], part)

    case = _common.floor_case(lambda size: [tmp_path / "a.zarr"], lambda size: 10_004, reads=2)
    r = case("tiny", tmp_path)
    assert r["decoded_bytes"] == 2 * 12 * 3 * 16 * 16 * 4  # every chunk, twice
    assert r["encoded_bytes"] == 10_004
    assert r["seconds"] == pytest.approx(r["decode_s"] + r["encode_s"], abs=2e-3)
    only_encode = _common.floor_case(lambda size: [tmp_path / "a.zarr"], lambda s: 4096, reads=0)
    assert only_encode("tiny", tmp_path)["decoded_bytes"] == 0


def test_bench_distributed_quick_reports_tasks_transfers_and_start_up() -> None:
    """bench_distributed's cluster rows carry what issue 19 asks the benchmark to print:
    the task count, the bytes fetched between workers and the cluster's start-up."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_distributed.py"), "--quick", "--case",
         "local_standardize"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| tiny | standardize"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    tasks, transfers, start_up = int(cells[6]), cells[7], float(cells[8])
    assert tasks > 0 and start_up > 0
    assert transfers.endswith(")") and "(" in transfers  # count (MiB)
