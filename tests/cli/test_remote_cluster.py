"""A dask cluster started elsewhere (`dask scheduler`, `dask worker` from other working
directories, on 127.0.0.1): relative paths give what the threaded scheduler gives, and a
cluster whose workers cannot do the work is refused in one line before anything is
written (a worker without cubepipe, a worker that cannot see the files)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cubepipe.storage import open_cube, store_state

pytest.importorskip("distributed")

from ..cluster import BIN
from ..cluster import cluster as _cluster


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
