"""Cube stores on object storage, against a real S3-compatible server (moto's server mode,
started on 127.0.0.1 by a fixture and stopped by pid): they are read by open_cube and by
every command that reads a store; writing there is refused in one line, nothing written.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cubepipe.storage import InputError, open_cube, store_state, write_cube
from cubepipe.storage.errors import InvalidStoreError, MissingDependencyError
from cubepipe.storage.location import remote_store

s3fs = pytest.importorskip("s3fs")

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint of a fresh moto S3 server with a bucket ``cubes``."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        pytest.skip("moto's server is not installed (the dev extra has moto[server])")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
                time.sleep(0.1)
        old = {k: os.environ.get(k) for k in [*ENV, "AWS_ENDPOINT_URL"]}
        os.environ.update({**ENV, "AWS_ENDPOINT_URL": endpoint})
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("cubes")
        yield endpoint
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def remote_scene(s3: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A complete cube store uploaded to ``s3://cubes/scene.zarr``, and its local copy."""
    from cubepipe.pipeline.synthetic import make_cube  # noqa: PLC0415

    local = write_cube(
        make_cube("small", seed=7, chunks={"y": 64, "x": 96}),
        tmp_path_factory.mktemp("local") / "scene.zarr",
        chunks={"y": 64, "x": 96},
    )
    s3fs.S3FileSystem().put(str(local), "cubes/scene.zarr", recursive=True)
    return "s3://cubes/scene.zarr", local


def test_open_cube_reads_a_store_on_s3(remote_scene: tuple[str, Path]) -> None:
    url, local = remote_scene
    assert store_state(url) == "complete"
    assert store_state("s3://cubes/nothing.zarr") == "missing"
    remote = open_cube(url)
    np.testing.assert_array_equal(remote["cube"].values, open_cube(local)["cube"].values)
    assert remote["cube"].data.chunksize == (15, 64, 96)
    # and plain xarray reads what cubepipe wrote, there too
    plain = xr.open_zarr(url)
    np.testing.assert_array_equal(plain["cube"].values, open_cube(local)["cube"].values)


def test_the_commands_read_from_s3(cli, remote_scene: tuple[str, Path], tmp_path: Path) -> None:
    url, local = remote_scene
    for src, out in ((url, "r.zarr"), (str(local), "l.zarr")):
        res = cli("-q", "standardize", src, "-o", out, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(
        open_cube(tmp_path / "r.zarr")["cube"].values, open_cube(tmp_path / "l.zarr")["cube"].values
    )
    res = cli("-q", "compress", url, "-k", "3", "-o", "c.zarr", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = cli("-q", "export", url, "-o", "b0.tif", "--bands", "0", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    import tifffile  # noqa: PLC0415

    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "b0.tif"), open_cube(local)["cube"].values[:1]
    )
    res = cli("info", url, "--json", cwd=tmp_path)
    assert res.returncode == 0 and '"state": "complete"' in res.stdout
    res = cli("-q", "stats", url, "--no-save", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (tmp_path / "p.yaml").write_text(
        f"steps:\n  - filter: {{in: '{url}', out: f.zarr, kernel: 'box:3'}}\n"
    )
    res = cli("-q", "run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert store_state(tmp_path / "f.zarr") == "complete"


def test_writing_to_s3_is_refused_and_writes_nothing(
    cli, remote_scene: tuple[str, Path], tmp_path: Path
) -> None:
    url, local = remote_scene
    fs = s3fs.S3FileSystem()
    before = sorted(fs.find("cubes"))
    for args in (
        ["standardize", str(local), "-o", "s3://cubes/z.zarr"],
        ["stats", url],  # saving into the store: refused before any work
        ["ingest", "x.npy", "-o", "s3://cubes/x.zarr"],
    ):
        res = cli(*args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stderr)
        assert "not supported yet" in res.stderr
        assert "stats 100%" not in res.stderr
    fs.invalidate_cache()
    assert sorted(fs.find("cubes")) == before
    with pytest.raises(InputError, match="not supported yet"):
        write_cube(open_cube(local), "s3://cubes/y.zarr")


def test_a_damaged_or_unfinished_store_on_s3_is_refused(
    remote_scene: tuple[str, Path], tmp_path: Path
) -> None:
    url, local = remote_scene
    fs = s3fs.S3FileSystem()
    fs.copy("cubes/scene.zarr", "cubes/damaged.zarr", recursive=True)
    fs.rm("cubes/damaged.zarr/cube/c/0/1/1")
    with pytest.raises(InvalidStoreError, match=r"chunk \(0, 1, 1\) of variable 'cube' is missing"):
        open_cube("s3://cubes/damaged.zarr")
    # a store whose writer did not finish (written locally, killed, then uploaded)
    unfinished = tmp_path / "u.zarr"
    shutil.copytree(local, unfinished)
    import zarr  # noqa: PLC0415

    group = zarr.open_group(str(unfinished), mode="r+")
    meta = dict(group.attrs["cubepipe"])
    meta["complete"] = False
    group.attrs["cubepipe"] = meta
    zarr.consolidate_metadata(str(unfinished))
    fs.put(str(unfinished), "cubes/unfinished.zarr", recursive=True)
    assert store_state("s3://cubes/unfinished.zarr") == "incomplete"
    with pytest.raises(Exception, match="--resume|incomplete|not finished"):
        open_cube("s3://cubes/unfinished.zarr")


def test_a_scheme_without_its_backend_names_what_to_install() -> None:
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(MissingDependencyError, match="'gcsfs'.*pip install gcsfs"):
        remote_store("gs://bucket/x.zarr")
    with pytest.raises(InputError, match="not ftp://"):
        remote_store("ftp://host/x.zarr")
