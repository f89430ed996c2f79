"""The store promises under damage, concurrency, full disks and hostile stores (issue 13).

Each test is one case from the issue's list of ways cubepipe exited 0 with wrong data (or
broke the error contract); each fails on the code before the fix. Outcomes are judged the
same way throughout: a correct result (checked against NumPy), or exit 2 with a one-line
message and no output marked complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from numcodecs import Zstd

from cubepipe.storage import open_cube, store_state, write_cube
from cubepipe.storage.guard import lock_path

from .. import conftest_fs
from ..conftest import cubepipe_exe

tiny_fs = conftest_fs.tiny_fs
readonly_fs = conftest_fs.readonly_fs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _cube(shape: tuple[int, ...] = (4, 96, 80), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(3.0, 2.0, size=shape).astype(np.float32)


def _store(path: Path, data: np.ndarray, chunks: dict[str, int] | None = None) -> Path:
    ds = xr.Dataset({"cube": (("band", "y", "x"), data)})
    return write_cube(
        ds, path, op="fixture", chunks=chunks or {"y": 32, "x": 32}, allow_nonfinite=True
    )


def _not_complete(path: Path) -> bool:
    return store_state(path) in ("missing", "incomplete")


def _one_line_exit_2(proc) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cubepipe: error:")]
    assert len(lines) == 1, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr


# -- an output that is its own input --------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["standardize", "{S}", "-o", "{S}", "--overwrite"],
        ["filter", "{S}", "-o", "{S}/", "--overwrite", "--kernel", "box:3"],
        ["filter", "{S}", "-o", "{S}/inner.zarr", "--kernel", "box:3"],
        ["compress", "{S}", "-o", "{D}", "--overwrite", "-k", "2"],
        ["standardize", "{S}", "-o", "{L}", "--overwrite"],
    ],
    ids=["same", "trailing-slash", "inside", "contains", "symlink"],
)
def test_an_output_overlapping_its_input_is_refused_and_the_input_kept(
    cli, tmp_path: Path, argv: list[str]
) -> None:
    data = _cube()
    inner = tmp_path / "d" / "S.zarr"
    inner.parent.mkdir()
    src = _store(inner, data)
    (tmp_path / "link.zarr").symlink_to(src)
    before = _digest(src)
    subs = {"{S}": str(src), "{D}": str(inner.parent), "{L}": str(tmp_path / "link.zarr")}
    args = []
    for a in argv:
        for key, value in subs.items():
            a = a.replace(key, value)
        args.append(a)
    proc = cli(*args)
    _one_line_exit_2(proc)
    assert "input" in proc.stderr
    assert _digest(src) == before
    np.testing.assert_array_equal(open_cube(src)["cube"].values, data)


def test_overwrite_keeps_the_old_output_when_the_new_run_fails(cli, tmp_path: Path) -> None:
    good = _store(tmp_path / "good.zarr", _cube(seed=1))
    out = tmp_path / "out.zarr"
    assert cli("-q", "standardize", str(good), "-o", str(out)).returncode == 0
    before = _digest(out)
    bad = _store(tmp_path / "bad.zarr", _cube(seed=2))
    (bad / "cube" / "c" / "0" / "1" / "1").unlink()  # damaged input: the new run fails
    proc = cli("-q", "standardize", str(bad), "-o", str(out), "--overwrite")
    _one_line_exit_2(proc)
    assert _digest(out) == before  # the old output, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zarr", "good.zarr", "out.zarr"]


def test_overwrite_through_a_symlinked_output_replaces_its_target(cli, tmp_path: Path) -> None:
    data = _cube(seed=3)
    src = _store(tmp_path / "in.zarr", data)
    old = _store(tmp_path / "old.zarr", _cube(seed=4))
    link = tmp_path / "result.zarr"
    link.symlink_to(old)
    assert cli("-q", "standardize", str(src), "-o", str(link), "--overwrite").returncode == 0
    assert link.is_symlink()
    z = open_cube(link)["cube"].values.astype(np.float64)
    d = data.astype(np.float64)
    ref = (d - d.mean(axis=(1, 2), keepdims=True)) / d.std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(z, ref, atol=1e-5)


# -- damaged complete stores ------------------------------------------------------------------

_READERS = [
    ["stats", "{S}"],
    ["standardize", "{S}", "-o", "{O}"],
    ["compress", "{S}", "-o", "{O}", "-k", "2"],
    ["filter", "{S}", "-o", "{O}", "--kernel", "box:3"],
    ["export", "{S}", "-o", "{F}"],
    ["report", "{S}", "-o", "{H}"],
]


def _run_reader(cli, argv: list[str], src: Path, tmp_path: Path):
    subs = {
        "{S}": str(src),
        "{O}": str(tmp_path / "out.zarr"),
        "{F}": str(tmp_path / "out.npy"),
        "{H}": str(tmp_path / "r.html"),
    }
    return cli(*[subs.get(a, a) for a in argv])


@pytest.mark.parametrize("argv", _READERS, ids=lambda a: a[0])
def test_a_missing_chunk_of_a_complete_store_is_an_error(cli, tmp_path: Path, argv) -> None:
    src = _store(tmp_path / "in.zarr", _cube())
    (src / "cube" / "c" / "0" / "1" / "2").unlink()
    proc = _run_reader(cli, argv, src, tmp_path)
    _one_line_exit_2(proc)
    assert "missing" in proc.stderr and "'cube'" in proc.stderr and "(0, 1, 2)" in proc.stderr
    assert _not_complete(tmp_path / "out.zarr")
    assert not (tmp_path / "out.npy").exists() and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("argv", _READERS, ids=lambda a: a[0])
def test_a_short_but_valid_zstd_chunk_is_an_error(cli, tmp_path: Path, argv) -> None:
    src = _store(tmp_path / "in.zarr", _cube())
    chunk = src / "cube" / "c" / "0" / "1" / "1"
    chunk.write_bytes(Zstd(level=1, checksum=True).encode(np.ones(100, np.float32)))
    proc = _run_reader(cli, argv, src, tmp_path)
    _one_line_exit_2(proc)
    assert str(chunk) in proc.stderr and "damaged" in proc.stderr
    assert _not_complete(tmp_path / "out.zarr")


def test_a_short_chunk_read_through_zarr_python_is_an_error(cli, tmp_path: Path) -> None:
    # int16-quantized stores are decoded by xarray/zarr-python, not the direct path
    np.save(tmp_path / "a.npy", _cube())
    out = tmp_path / "q.zarr"
    args = ["-q", "ingest", str(tmp_path / "a.npy"), "-o", str(out), "--chunks", "y=32,x=32"]
    assert cli(*args, "--encoding", "int16-quantized").returncode == 0
    chunk = out / "cube" / "c" / "0" / "1" / "1"
    chunk.write_bytes(Zstd(level=1, checksum=True).encode(np.ones(10, np.int16)))
    _one_line_exit_2(cli("stats", str(out)))


def test_a_store_whose_history_is_not_a_list_is_refused(cli, tmp_path: Path) -> None:
    src = _store(tmp_path / "in.zarr", _cube())
    meta = json.loads((src / "zarr.json").read_text())
    meta["attributes"]["cubepipe"]["history"] = "rm -rf /"
    meta.pop("consolidated_metadata", None)
    (src / "zarr.json").write_text(json.dumps(meta))
    for argv in (["info", str(src)], ["stats", str(src)], ["report", str(src), "-o", "r.html"]):
        proc = cli(*argv, cwd=tmp_path)
        _one_line_exit_2(proc)
        assert "history" in proc.stderr


def test_a_zarr_v2_store_written_by_plain_xarray_is_read(cli, tmp_path: Path) -> None:
    data = _cube(seed=5)
    path = tmp_path / "v2.zarr"
    xr.Dataset({"cube": (("band", "y", "x"), data)}).to_zarr(path, zarr_format=2)
    assert cli("info", str(path)).returncode == 0
    assert cli("-q", "report", str(path), "-o", str(tmp_path / "r.html")).returncode == 0
    proc = cli("-q", "stats", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    bands = json.loads(proc.stdout)["bands"]
    d = data.astype(np.float64)
    np.testing.assert_allclose([b["mean"] for b in bands], d.mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose([b["std"] for b in bands], d.std(axis=(1, 2)), rtol=1e-10)
    assert (path / ".zgroup").is_file() and not (path / "stats_mean" / "zarr.json").exists()


# -- resume and concurrency ---------------------------------------------------------------------


def _start_ingest(src: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [cubepipe_exe(), "-q", "--scheduler", "synchronous", "ingest", str(src), "-o", str(out)]
        + ["--chunks", "y=100,x=100"],
        env={**os.environ, "CUBEPIPE_DEVICE": "cpu"},
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(cond, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_resume_from_another_input_is_refused(cli, tmp_path: Path) -> None:
    a, b = _cube((8, 1000, 1000), seed=6), _cube((8, 1000, 1000), seed=7)
    np.save(tmp_path / "A.npy", a)
    np.save(tmp_path / "B.npy", b)
    out = tmp_path / "O.zarr"
    proc = _start_ingest(tmp_path / "A.npy", out)
    chunks = out / "cube" / "c"
    _wait_for(lambda: chunks.exists() and sum(f.is_file() for f in chunks.rglob("*")) >= 5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert store_state(out) == "incomplete"

    resumed_b = cli("ingest", str(tmp_path / "B.npy"), "-o", str(out), "--resume")
    _one_line_exit_2(resumed_b)
    assert "A.npy" in resumed_b.stderr and store_state(out) == "incomplete"
    ok = cli(
        "-q", "ingest", str(tmp_path / "A.npy"), "-o", str(out), "--resume", "--chunks",
        "y=100,x=100",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert open_cube(out)["cube"].values.tobytes() == a.tobytes()


def test_a_second_writer_of_the_same_output_is_refused(cli, tmp_path: Path) -> None:
    a = _cube((16, 1500, 1000), seed=8)  # 2400 chunks one at a time: several seconds
    np.save(tmp_path / "A.npy", a)
    np.save(tmp_path / "B.npy", a[::-1].copy())
    out = tmp_path / "O.zarr"
    first = _start_ingest(tmp_path / "A.npy", out)
    assert _wait_for(lambda: lock_path(out).exists() or first.poll() is not None)
    for extra in ([], ["--overwrite"], ["--resume"]):
        second = cli("ingest", str(tmp_path / "B.npy"), "-o", str(out), *extra)
        assert first.poll() is None, "the first writer finished: the test proves nothing"
        _one_line_exit_2(second)
        assert f"pid {first.pid}" in second.stderr
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert not lock_path(out).exists()
    assert open_cube(out)["cube"].values.tobytes() == a.tobytes()


def test_a_stale_lock_of_a_dead_process_is_taken_over(cli, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "O.zarr"
    np.save(tmp_path / "A.npy", _cube())
    lock_path(out).write_text(
        json.dumps({"pid": dead.pid, "host": os.uname().nodename, "command": "killed"})
    )
    assert cli("-q", "ingest", str(tmp_path / "A.npy"), "-o", str(out)).returncode == 0
    assert store_state(out) == "complete" and not lock_path(out).exists()


# -- full and read-only disks -------------------------------------------------------------------


def _fill(directory: Path) -> None:
    """Fill the file system of ``directory`` to the last byte."""
    with open(directory / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


def test_stats_on_a_full_disk_leaves_its_input_intact(cli, tiny_fs, tmp_path: Path) -> None:
    fs = tiny_fs("4m")
    data = _cube((4, 200, 200), seed=9)
    src = _store(fs / "in.zarr", data, chunks={"y": 100, "x": 100})
    before = _digest(src)
    _fill(fs)
    proc = cli("stats", str(src))
    _one_line_exit_2(proc)
    assert "no space" in proc.stderr
    assert _digest(src) == before
    assert store_state(src) == "complete"
    np.testing.assert_array_equal(open_cube(src)["cube"].values, data)
    assert sorted(p.name for p in fs.iterdir()) == ["filler", "in.zarr"]


@pytest.mark.parametrize("what", ["ingest", "standardize", "compress"])
def test_writers_on_a_full_disk_fail_in_one_line(cli, tiny_fs, tmp_path: Path, what: str) -> None:
    fs = tiny_fs("1m")
    data = _cube((8, 300, 300), seed=10)  # 2.9 MB: does not fit
    np.save(tmp_path / "a.npy", data)
    src = _store(tmp_path / "in.zarr", data)
    out = fs / "out.zarr"
    argv = {
        "ingest": ["ingest", str(tmp_path / "a.npy"), "-o", str(out)],
        "standardize": ["standardize", str(src), "-o", str(out)],
        "compress": ["compress", str(src), "-o", str(out), "-k", "8"],
    }[what]
    proc = cli(*argv)
    _one_line_exit_2(proc)
    assert "no space" in proc.stderr and str(out) in proc.stderr
    assert _not_complete(out)


def test_writers_on_a_read_only_disk_fail_in_one_line(cli, readonly_fs, tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _cube())
    proc = cli("ingest", str(tmp_path / "a.npy"), "-o", str(readonly_fs / "out.zarr"))
    _one_line_exit_2(proc)
    assert "read-only" in proc.stderr


def test_stats_of_a_store_on_a_read_only_disk_fails_in_one_line(
    cli, tiny_fs, tmp_path: Path
) -> None:
    fs = tiny_fs("4m")
    src = _store(fs / "in.zarr", _cube())
    before = _digest(src)
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    try:
        proc = cli("stats", str(src))
        _one_line_exit_2(proc)
        assert "read-only" in proc.stderr
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True)
    assert _digest(src) == before


# -- numeric honesty ---------------------------------------------------------------------------


def _overflowing(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = _cube((4, 64, 64), seed=11)
    f32max = np.finfo(np.float32).max
    data[:, 10, 10] = f32max  # finite, but its PCA score is about 2 x float32's largest
    data[:, 20, 20] = -f32max
    return _store(tmp_path / "big.zarr", data), data


def test_an_overflowing_compress_fails_instead_of_writing_inf(cli, tmp_path: Path) -> None:
    src, data = _overflowing(tmp_path)
    assert np.isfinite(data).all()
    out = tmp_path / "c.zarr"
    proc = cli("compress", str(src), "-o", str(out), "-k", "2")
    _one_line_exit_2(proc)
    assert "infinite" in proc.stderr and "--allow-nonfinite" in proc.stderr
    assert not out.exists()
    ok = cli("-q", "compress", str(src), "-o", str(out), "-k", "2", "--allow-nonfinite")
    assert ok.returncode == 0, ok.stderr
    scores = xr.open_zarr(out)["scores"].values
    n_inf = int(np.isinf(scores).sum())
    assert n_inf > 0
    entry = xr.open_zarr(out).attrs["cubepipe"]["history"][-1]
    assert entry["nonfinite"] == {"scores": n_inf}


def test_infinite_input_values_are_refused_by_every_fit(cli, tmp_path: Path) -> None:
    data = _cube(seed=12)
    data[1, 5, 5] = np.inf  # data (ingest keeps it bit for bit), but nothing to fit on
    src = _store(tmp_path / "inf.zarr", data)
    assert np.isinf(data.astype(np.float64)[1].mean())  # what NumPy's statistics give
    for argv in (
        ["stats", str(src)],
        ["standardize", str(src), "-o", str(tmp_path / "z.zarr")],
        ["compress", str(src), "-o", str(tmp_path / "c.zarr"), "-k", "2"],
    ):
        proc = cli(*argv)
        _one_line_exit_2(proc)
        assert "band(s) 1 hold +-inf" in proc.stderr
    assert _not_complete(tmp_path / "z.zarr") and _not_complete(tmp_path / "c.zarr")
    assert "stats_mean" not in xr.open_zarr(src)  # nothing saved into the input


def test_a_reconstruction_of_infinite_scores_fails(cli, tmp_path: Path) -> None:
    src, _ = _overflowing(tmp_path)
    c = tmp_path / "c.zarr"
    assert (
        cli("-q", "compress", str(src), "-o", str(c), "-k", "4", "--allow-nonfinite").returncode
        == 0
    )
    proc = cli("reconstruct", str(c), "-o", str(tmp_path / "r.zarr"))
    _one_line_exit_2(proc)
    assert "infinite" in proc.stderr and not (tmp_path / "r.zarr").exists()


def test_a_destandardization_that_overflows_float32_fails(cli, tmp_path: Path) -> None:
    # A standardized cube of a scene with a huge spread: z * std overflows float32 for
    # z = 10 (NumPy: 10 * 1e38 = 1e39 > 3.4e38), though every stored value is finite.
    z = np.full((2, 32, 32), 0.5, np.float32)
    z[0, 0, 0] = 10.0
    assert np.isinf(np.float32(10.0 * 1e38))
    cube = xr.DataArray(z, dims=("band", "y", "x"), attrs={"cubepipe_standardized": "zscore"})
    ds = xr.Dataset(
        {
            "cube": cube,
            "stats_count": ("band", np.array([1024, 1024], np.int64)),
            "stats_mean": ("band", np.zeros(2)),
            "stats_std": ("band", np.array([1e38, 1.0])),
            "stats_min": ("band", np.array([-1e38, 0.0])),
            "stats_max": ("band", np.array([1e38, 1.0])),
        }
    )
    src = write_cube(ds, tmp_path / "z.zarr", op="standardize")
    proc = cli("destandardize", str(src), "-o", str(tmp_path / "d.zarr"))
    _one_line_exit_2(proc)
    assert "infinite" in proc.stderr and not (tmp_path / "d.zarr").exists()


def test_an_export_into_its_own_store_is_refused(cli, tmp_path: Path) -> None:
    src = _store(tmp_path / "in.zarr", _cube())
    before = _digest(src)
    chunk = src / "cube" / "c" / "0" / "0" / "0.npy"
    proc = cli("export", str(src), "-o", str(chunk), "--overwrite")
    _one_line_exit_2(proc)
    assert "inside the input" in proc.stderr and _digest(src) == before


@pytest.mark.parametrize(
    ("argv", "env", "flushed"),
    [([], "", False), (["--durable"], "", True), ([], "1", True)],
    ids=["default", "--durable", "CUBEPIPE_DURABLE=1"],
)
def test_durable_writes_flush_before_the_completion_marker(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], env: str, flushed: bool
) -> None:
    import cubepipe.storage.store as store  # noqa: PLC0415

    calls: list[tuple[Path, bool]] = []
    real_sync = store._sync

    def spy(path: Path) -> None:  # the real flush, and whether the marker was there yet
        calls.append((path, store_state(path) == "complete"))
        real_sync(path)

    monkeypatch.setattr(store, "_sync", spy)
    monkeypatch.setenv("CUBEPIPE_DURABLE", env)
    np.save(tmp_path / "a.npy", _cube())
    out = tmp_path / "o.zarr"
    assert cli(*argv, "-q", "ingest", str(tmp_path / "a.npy"), "-o", str(out)).returncode == 0
    assert calls == ([(out, False)] if flushed else [])
    assert store_state(out) == "complete"
