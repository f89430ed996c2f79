"""Batch-job behaviour: readable task names on a real cluster, resume after SIGKILL,
progress lines."""

from __future__ import annotations

import hashlib
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import open_cube, store_state, write_cube

from ..conftest import cubepipe_exe

_TASKS_SCRIPT = r"""
import sys
import xarray as xr
from distributed import Client, LocalCluster, get_task_stream
from cubepipe.storage import open_cube, write_cube
from cubepipe.pipeline.stats.standardize import standardize
from cubepipe.pipeline.compression.pca import fit_pca, pca_project, reconstruction_metrics

if __name__ == "__main__":
    src, work = sys.argv[1], sys.argv[2]
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as c, Client(c):
        with get_task_stream() as ts:
            ds = open_cube(src)
            write_cube(standardize(ds), work + "/z.zarr", op="standardize")
            model, _ = fit_pca(open_cube(work + "/z.zarr"), n_components=3)
            z = open_cube(work + "/z.zarr")
            scores = pca_project(z, model)
            write_cube(
                xr.Dataset({"scores": scores}),
                work + "/c.zarr",
                op="compress",
                results={"m": reconstruction_metrics(z, scores, model)},
            )
    for t in ts.data:
        key = t["key"][0] if isinstance(t["key"], tuple) else t["key"]
        print("TASK", key)
"""


def test_task_stream_on_a_local_cluster_shows_cubepipe_names(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    src = write_cube(
        make_cube((6, 96, 128), seed=1), tmp_path / "in.zarr", chunks={"y": 48, "x": 64}
    )
    script = tmp_path / "tasks.py"
    script.write_text(_TASKS_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(src), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    keys = [line[5:] for line in proc.stdout.splitlines() if line.startswith("TASK ")]
    assert len(keys) > 20
    # dask's own `finalize-*` steps gather results to the client; every task that does
    # cubepipe's work is named after the operation.
    ours = [k for k in keys if "finalize-hlgfinalizecompute" not in k]
    assert ours and all(k.startswith("cubepipe-") for k in ours), sorted(set(ours))[:10]
    for prefix in (
        "cubepipe-read-cube",
        "cubepipe-stats",
        "cubepipe-standardize",
        "cubepipe-compress",
    ):
        # (dask fuses chains of tasks; a fused task carries one of its layers' names)
        assert any(prefix in k for k in keys), (prefix, sorted({k.rsplit("-", 1)[0] for k in keys}))


def _digest(path: Path) -> str:
    return hashlib.sha256(open_cube(path)["cube"].values.tobytes()).hexdigest()


def test_sigkill_then_resume_gives_identical_data(tmp_path: Path, cli) -> None:
    src = write_cube(
        make_cube((15, 1200, 1200), seed=3), tmp_path / "in.zarr", chunks={"y": 150, "x": 150}
    )
    assert cli("-q", "stats", str(src)).returncode == 0  # so standardize is write-only
    clean = tmp_path / "clean.zarr"
    assert cli("-q", "standardize", str(src), "-o", str(clean)).returncode == 0

    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        [
            cubepipe_exe(),
            "-q",
            "--scheduler",
            "synchronous",
            "standardize",
            str(src),
            "-o",
            str(out),
        ],
        env={**os.environ, "CUBEPIPE_DEVICE": "cpu"},
    )
    chunks = out / "cube" / "c"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if chunks.exists() and sum(f.is_file() for f in chunks.rglob("*")) >= 5:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert store_state(out) == "incomplete"
    written = sum(f.is_file() for f in chunks.rglob("*"))
    assert 0 < written < 64

    refused = cli("standardize", str(src), "-o", str(out))
    assert refused.returncode == 2 and "--resume" in refused.stderr
    assert cli("standardize", str(src), "-o", str(out), "--resume").returncode == 0
    assert store_state(out) == "complete"
    assert _digest(out) == _digest(clean)


def test_progress_lines_when_not_a_terminal_and_quiet(
    tmp_path: Path, cli, small_store: Path
) -> None:
    proc = cli("standardize", str(small_store), "-o", str(tmp_path / "z.zarr"))
    assert proc.returncode == 0
    assert "cubepipe: standardize 100% (" in proc.stderr
    quiet = cli("-q", "standardize", str(small_store), "-o", str(tmp_path / "q.zarr"))
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_progress_bar_on_a_terminal(tmp_path: Path, small_store: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # child: the real CLI on a pseudo-terminal
        os.execv(
            cubepipe_exe(),
            [cubepipe_exe(), "standardize", str(small_store), "-o", str(tmp_path / "t.zarr")],
        )
    out = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "\rstandardize [" in text and "100.0%" in text
    assert np.isfinite(open_cube(tmp_path / "t.zarr")["cube"].values).any()
