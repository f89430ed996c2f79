"""A dask cluster started elsewhere (`dask scheduler`, `dask worker` from other working
directories, on 127.0.0.1): relative paths give what the threaded scheduler gives, and a
cluster whose workers cannot do the work is refused in one line before anything is
written (a worker without cubepipe, a worker that cannot see the files)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cubepipe.storage import open_cube, store_state

pytest.importorskip("distributed")

BIN = Path(sys.executable).parent


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _address(scheduler_file: Path, proc: subprocess.Popen, log: Path) -> str:
    import json  # noqa: PLC0415

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if scheduler_file.exists():
            try:
                return json.loads(scheduler_file.read_text())["address"]
            except ValueError:
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"dask scheduler did not start: {log.read_text()[-2000:]}")


def _cluster(tmp: Path, worker_prefix: list[str], worker_cmd: list[str]) -> Iterator[str]:
    """Start a scheduler and one worker, each in its own directory under ``tmp``."""
    for d in ("scheduler", "worker"):
        (tmp / d).mkdir()
    sfile = tmp / "scheduler.json"
    sched = _start(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sfile)],
        tmp / "scheduler",
        tmp / "scheduler.log",
    )  # fmt: skip
    try:
        address = _address(sfile, sched, tmp / "scheduler.log")
        worker = _start(
            [*worker_prefix, *worker_cmd, address, "--nthreads", "1", "--host", "127.0.0.1",
             "--no-dashboard", "--memory-limit", "0", "--no-nanny"],
            tmp / "worker",
            tmp / "worker.log",
        )  # fmt: skip
        try:
            yield address
        finally:
            _stop(worker)
    finally:
        _stop(sched)


@pytest.fixture
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _cluster(tmp_path_factory.mktemp("cluster"), [], [str(BIN / "dask"), "worker"])


@pytest.fixture
def remote_without_cubepipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The same interpreter, but `import cubepipe` fails as in an environment without it
    # (no nanny: it would start the worker in a fresh interpreter).
    code = (
        "import sys; sys.modules['cubepipe'] = None; "
        "from distributed.cli.dask_worker import main; sys.argv[0] = 'dask-worker'; main()"
    )
    yield from _cluster(tmp_path_factory.mktemp("cluster"), [sys.executable, "-c", code], [])


@pytest.fixture
def remote_elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A worker on "another machine": its own mount namespace, where the client's data
    directory is an empty tmpfs (the same path, other contents)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    data = tmp_path_factory.mktemp("data")
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode:
        pytest.skip(f"unshare -m is not permitted here: {probe.stderr.decode()[:200]}")
    prefix = [
        "unshare", "-m", "--propagation", "private", "sh", "-c",
        f'mount -t tmpfs tmpfs "{data}" && exec "$0" "$@"',
    ]  # fmt: skip
    for address in _cluster(
        tmp_path_factory.mktemp("cluster"), prefix, [str(BIN / "dask"), "worker"]
    ):
        yield address, data


def test_relative_paths_on_a_cluster_started_elsewhere(cli, small_store: Path, remote: str) -> None:
    work = small_store.parent
    ref = cli("--quiet", "filter", small_store.name, "-o", "t.zarr", "-k", "gaussian:1.5", cwd=work)
    assert ref.returncode == 0, ref.stderr
    res = cli(
        "--quiet", "--scheduler", remote, "filter", small_store.name, "-o", "d.zarr",
        "-k", "gaussian:1.5", cwd=work,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    a = open_cube(work / "t.zarr")["cube"].values
    b = open_cube(work / "d.zarr")["cube"].values
    assert np.isfinite(b).any()
    np.testing.assert_array_equal(a, b)  # bit-identical, NaN where NaN
    res = cli(
        "--quiet", "--scheduler", remote, "standardize", small_store.name, "-o", "z.zarr",
        cwd=work,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    ref = cli("--quiet", "standardize", small_store.name, "-o", "zt.zarr", cwd=work)
    np.testing.assert_array_equal(
        open_cube(work / "z.zarr")["cube"].values, open_cube(work / "zt.zarr")["cube"].values
    )


def test_a_worker_without_cubepipe_is_refused_in_one_line(
    cli, small_store: Path, remote_without_cubepipe: str
) -> None:
    t0 = time.monotonic()
    res = cli(
        "--scheduler", remote_without_cubepipe, "--connect-timeout", "20",
        "filter", str(small_store), "-o", str(small_store.parent / "f.zarr"), "-k", "box:3",
    )  # fmt: skip
    assert res.returncode == 2
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("cubepipe: error: dask worker tcp://127.0.0.1:")
    assert "cannot import cubepipe (ModuleNotFoundError" in line and "install cubepipe" in line
    assert store_state(small_store.parent / "f.zarr") == "missing"
    assert time.monotonic() - t0 < 30


def test_a_worker_that_cannot_see_the_files_is_refused(
    cli, small_store: Path, remote_elsewhere: tuple[str, Path]
) -> None:
    address, data = remote_elsewhere
    src = data / "in.zarr"
    shutil.copytree(small_store, src)
    res = cli("--scheduler", address, "filter", str(src), "-o", str(data / "f.zarr"), "-k", "box:3")
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert f"cannot see {src}" in line and "share this file system" in line
    assert store_state(data / "f.zarr") == "missing"
