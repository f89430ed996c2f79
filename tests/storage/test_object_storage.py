"""Cube stores on object storage, against a real S3-compatible server (moto's server mode,
started on 127.0.0.1 by a fixture and stopped by pid): read and written by every command
as local stores are, with the same promises (complete means complete, SIGKILL then
--resume gives identical data, one writer at a time)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cubepipe.storage import (
    InputError,
    history,
    open_cube,
    read_attrs,
    store_state,
    write_cube,
)
from cubepipe.storage.errors import IncompleteStoreError, InvalidStoreError, MissingDependencyError
from cubepipe.storage.location import remote_store

from .test_store import _KILL_SCRIPT

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


def test_what_is_not_written_to_s3_is_refused_and_writes_nothing(
    cli, remote_scene: tuple[str, Path], tmp_path: Path
) -> None:
    url, local = remote_scene
    fs = s3fs.S3FileSystem()
    before = sorted(fs.find("cubes"))
    for args in (
        ["stats", url],  # saving into the store: refused before any work
        ["standardize", url, "-o", f"{url}/inside.zarr"],  # inside its input
        ["standardize", str(local), "-o", url],  # exists, no --overwrite
    ):
        res = cli(*args, cwd=tmp_path)
        assert res.returncode == 2, (args, res.stderr)
        assert "stats 100%" not in res.stderr
    fs.invalidate_cache()
    assert sorted(fs.find("cubes")) == before


def test_the_chain_writes_to_s3_as_it_writes_locally(
    cli, remote_scene: tuple[str, Path], tmp_path: Path
) -> None:
    url, local = remote_scene
    x = np.random.default_rng(3).normal(-2, 5, size=(6, 40, 50)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for root in ("s3://cubes/chain", str(tmp_path / "chain")):
        steps = [
            ["ingest", "x.npy", "-o", f"{root}/x.zarr"],
            ["standardize", f"{root}/x.zarr", "-o", f"{root}/z.zarr"],
            ["compress", f"{root}/z.zarr", "-k", "3", "-o", f"{root}/c.zarr"],
            ["reconstruct", f"{root}/c.zarr", "-o", f"{root}/r.zarr"],
            ["filter", f"{root}/x.zarr", "-k", "gaussian:1", "-o", f"{root}/f.zarr"],
        ]
        for args in steps:
            res = cli("-q", *args, cwd=tmp_path)
            assert res.returncode == 0, (args, res.stderr)
    for name in ("x", "z", "c", "r", "f"):
        var = "scores" if name == "c" else "cube"
        remote = xr.open_zarr(f"s3://cubes/chain/{name}.zarr")[var].values  # plain xarray
        np.testing.assert_array_equal(
            remote, open_cube(tmp_path / "chain" / f"{name}.zarr")[var].values
        )
        assert store_state(f"s3://cubes/chain/{name}.zarr") == "complete"
    np.testing.assert_array_equal(open_cube("s3://cubes/chain/x.zarr")["cube"].values, x)
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    assert not [k for k in fs.find("cubes/chain") if k.endswith(".lock")]  # locks released
    res = cli("-q", "export", "s3://cubes/chain/r.zarr", "-o", "r.tif", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = cli("-q", "report", "s3://cubes/chain/c.zarr", "-o", "c.html", cwd=tmp_path)
    assert res.returncode == 0, res.stderr


def test_sigkill_then_resume_on_s3_gives_identical_data(s3: str, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(_KILL_SCRIPT)
    url = "s3://cubes/killed.zarr"
    fs = s3fs.S3FileSystem()
    proc = subprocess.Popen([sys.executable, str(script), url])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fs.invalidate_cache()
        if fs.exists("cubes/killed.zarr/cube/c") and len(fs.find("cubes/killed.zarr/cube/c")) >= 3:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fs.invalidate_cache()
    assert fs.exists("cubes/killed.zarr.lock")  # the killed writer's lock is left behind
    assert store_state(url) == "incomplete"
    with pytest.raises(IncompleteStoreError):
        open_cube(url)
    # the lock of a dead process of this host is taken over; the chunks on S3 are kept
    subprocess.run([sys.executable, str(script), url, "--resume"], check=True, timeout=120)
    expected = np.arange(4 * 32 * 32, dtype="float32").reshape(4, 32, 32) - 5000
    assert open_cube(url)["cube"].values.tobytes() == expected.tobytes()
    assert "resumed" in history(read_attrs(url))[-1]


def test_a_second_writer_of_an_s3_store_fails_at_once(s3: str, tmp_path: Path, small_cube) -> None:
    from cubepipe.storage.remote import remote_lock  # noqa: PLC0415

    url = "s3://cubes/busy.zarr"
    with remote_lock(url):
        script = tmp_path / "w.py"
        script.write_text(
            "import sys\nfrom cubepipe.pipeline.synthetic import make_cube\n"
            "from cubepipe.storage import write_cube\n"
            "write_cube(make_cube('small', seed=1), sys.argv[1])\n"
        )
        proc = subprocess.run(
            [sys.executable, str(script), url], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode != 0
        assert "is being written by another process" in proc.stderr
    assert store_state(url) == "missing"


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


def test_a_pipeline_on_s3_runs_and_resumes(
    cli, remote_scene: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = remote_scene
    (tmp_path / "p.yaml").write_text(
        "steps:\n"
        f"  - standardize: {{in: '{url}', out: 's3://cubes/p/z.zarr'}}\n"
        "  - compress: {out: 's3://cubes/p/c.zarr', components: 2}\n"
    )
    res = cli("-q", "run", "p.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert store_state("s3://cubes/p/c.zarr") == "complete"
    res = cli("run", "p.yaml", "--resume", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("skipped") == 2  # both outputs complete, made by these steps


def test_files_on_s3_ingest_and_export_round_trip(cli, s3: str, tmp_path: Path) -> None:
    fs = s3fs.S3FileSystem()
    frames = np.random.default_rng(9).normal(-1, 2, size=(3, 2, 16, 20)).astype(np.float32)
    for i, f in enumerate(frames):
        np.save(tmp_path / f"f{i}.npy", f)
        fs.put_file(str(tmp_path / f"f{i}.npy"), f"cubes/files/f{i}.npy")
    res = cli(
        "-q", "ingest", "s3://cubes/files/f*.npy", "-o", "s3://cubes/files.zarr", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(open_cube("s3://cubes/files.zarr")["cube"].values, frames)
    entry = history(read_attrs("s3://cubes/files.zarr"))[-1]
    assert entry["inputs"] == ["s3://cubes/files/f*.npy"]  # what was named, not a temp copy
    # exact floats and a scaled preview with its sidecar, uploaded beside each other
    res = cli("-q", "export", "s3://cubes/files.zarr", "-o", "s3://cubes/out/x.tif", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    fs.invalidate_cache()
    fs.get_file("cubes/out/x.tif", str(tmp_path / "x.tif"))
    import tifffile  # noqa: PLC0415

    np.testing.assert_array_equal(tifffile.imread(tmp_path / "x.tif").reshape(frames.shape), frames)
    res = cli("export", "s3://cubes/files.zarr", "-o", "s3://cubes/out/x.tif", cwd=tmp_path)
    assert res.returncode == 2 and "exists; pass --overwrite" in res.stderr
    res = cli("-q", "report", "s3://cubes/files.zarr", "-o", "s3://cubes/out/r.html", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert fs.cat_file("cubes/out/r.html").startswith(b"<!DOCTYPE html>")
    res = cli("-q", "ingest", "s3://cubes/files/nothing*.npy", "-o", "n.zarr", cwd=tmp_path)
    assert res.returncode == 2 and "no such file on object storage" in res.stderr


def test_storage_options_on_the_command_line_reach_every_path(
    cli, s3: str, remote_scene: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No endpoint or credentials in the environment: ``--storage-option`` carries them to
    inputs, outputs, ``--stats`` and ``--model``, and plain xarray reads the results with
    the same ``storage_options``."""
    url, local = remote_scene
    for key in [*ENV, "AWS_ENDPOINT_URL"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()
    options = {"endpoint_url": s3, "key": "testing", "secret": "testing"}
    flags = [f"--storage-option={k}={v}" for k, v in options.items()]

    res = cli("-q", "standardize", url, "-o", "s3://cubes/opts/z.zarr")
    assert res.returncode == 2, res.stderr  # no endpoint: AWS itself, no credentials
    assert len(res.stderr.strip().splitlines()) == 1
    for args in (
        ["standardize", url, "-o", "s3://cubes/opts/z.zarr"],
        ["compress", "s3://cubes/opts/z.zarr", "-k", "3", "-o", "s3://cubes/opts/c.zarr"],
        ["standardize", str(local), "--stats", "s3://cubes/opts/z.zarr", "-o", "z.zarr"],
        ["compress", "z.zarr", "--model", "s3://cubes/opts/c.zarr", "-o", "c.zarr"],
        ["info", "s3://cubes/opts/c.zarr"],
    ):
        res = cli("-q", *flags, *args, cwd=tmp_path)
        assert res.returncode == 0, (args, res.stderr)
    for name, var in (("z", "cube"), ("c", "scores")):
        plain = xr.open_zarr(f"s3://cubes/opts/{name}.zarr", storage_options=options)[var]
        np.testing.assert_array_equal(
            plain.values, open_cube(tmp_path / f"{name}.zarr")[var].values
        )
    # the same from the environment variable
    monkeypatch.setenv("CUBEPIPE_STORAGE_OPTIONS", " ".join(f"{k}={v}" for k, v in options.items()))
    res = cli("info", "s3://cubes/opts/z.zarr", "--json", cwd=tmp_path)
    assert res.returncode == 0 and '"state": "complete"' in res.stdout, res.stderr
    res = cli("--storage-option", "endpoint_url", "info", url, cwd=tmp_path)
    assert res.returncode == 2 and "expected KEY=VALUE" in res.stderr


def test_an_endpoint_that_does_not_answer_is_one_line(cli_process, tmp_path: Path) -> None:
    """A closed port: one line naming the endpoint and where it is set, exit 2, nothing
    else on stderr (no tracebacks of abandoned requests at exit)."""
    port = _free_port()  # nothing listens there
    res = cli_process(
        "--storage-option", f"endpoint_url=http://127.0.0.1:{port}",
        "--storage-option", 'config_kwargs={"retries": {"max_attempts": 1}}',
        "info", "s3://cubes/x.zarr",
        cwd=tmp_path,
        env={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    assert "endpoint did not answer" in res.stderr and f"127.0.0.1:{port}" in res.stderr


@pytest.fixture
def cluster_without_credentials(s3: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `dask scheduler` + `dask worker` started elsewhere whose environment has no
    object storage endpoint or credentials."""
    pytest.importorskip("distributed")
    from ..cluster import BIN, cluster  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    yield from cluster(tmp_path_factory.mktemp("cluster"), [], [str(BIN / "dask"), "worker"], env)


def test_object_storage_with_a_cluster_started_elsewhere(
    cli,
    s3: str,
    remote_scene: tuple[str, Path],
    cluster_without_credentials: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """s3:// in and out on a remote cluster: the storage options given to the client
    reach the workers with the work, and the results equal the threaded scheduler's."""
    url, local = remote_scene
    for key in [*ENV, "AWS_ENDPOINT_URL"]:
        monkeypatch.delenv(key, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    options = {"endpoint_url": s3, "key": "testing", "secret": "testing"}
    flags = [f"--storage-option={k}={v}" for k, v in options.items()]
    on_cluster = ["--scheduler", cluster_without_credentials]
    for args in (
        ["standardize", url, "-o", "s3://cubes/cl/z.zarr"],
        ["filter", url, "-k", "gaussian:1", "-o", "s3://cubes/cl/f.zarr"],
        ["compress", "s3://cubes/cl/z.zarr", "-k", "3", "-o", "s3://cubes/cl/c.zarr"],
    ):
        res = cli("-q", *flags, *on_cluster, *args, cwd=tmp_path)
        assert res.returncode == 0, (args, res.stderr)
    for args in (
        ["standardize", str(local), "-o", "z.zarr"],
        ["filter", str(local), "-k", "gaussian:1", "-o", "f.zarr"],
        ["compress", "z.zarr", "-k", "3", "-o", "c.zarr"],
    ):
        res = cli("-q", *args, cwd=tmp_path)
        assert res.returncode == 0, (args, res.stderr)
    for name, var in (("z", "cube"), ("f", "cube"), ("c", "scores")):
        plain = xr.open_zarr(f"s3://cubes/cl/{name}.zarr", storage_options=options)[var].values
        assert np.isfinite(plain).any()
        np.testing.assert_array_equal(plain, open_cube(tmp_path / f"{name}.zarr")[var].values)


def test_a_torch_dataset_on_s3_carries_its_storage_options(
    s3: str, remote_scene: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made inside ``storage_options(...)``, pickled (as for a spawned DataLoader worker)
    and read outside it: the options travel with the Dataset."""
    pytest.importorskip("torch")
    import pickle  # noqa: PLC0415

    from cubepipe.pipeline.torch import CubeDataset  # noqa: PLC0415
    from cubepipe.storage import storage_options  # noqa: PLC0415

    url, local = remote_scene
    for key in [*ENV, "AWS_ENDPOINT_URL"]:
        monkeypatch.delenv(key, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    with storage_options(endpoint_url=s3, key="testing", secret="testing"):
        dataset = CubeDataset(url, patch=(64, 96))
    copy = pickle.loads(pickle.dumps(dataset))
    cube = open_cube(local)["cube"].values
    for i in (0, len(copy) - 1):
        w = copy.window(i)
        want = cube[:, w.y, w.x]
        got = copy.sample(i)[:, : want.shape[1], : want.shape[2]]  # a padded edge patch
        np.testing.assert_array_equal(got, want)
