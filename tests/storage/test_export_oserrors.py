"""Export to a full or read-only filesystem: one line, exit 2, nothing left behind.

Real filesystems (a tiny tmpfs, a read-only tmpfs: tests/conftest_fs.py), the
in-process CLI. Each case runs twice where it matters: as a user meets it (the room
check before any data is read refuses it) and with that check disabled, so the writes
themselves hit the full disk -- which, through a memory map, killed the process with
SIGBUS and left a hidden partial file.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import numpy as np
import pytest

import cubepipe.storage.export as export_module
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import write_cube
from cubepipe.storage.errors import CubepipeError, FileSystemError
from cubepipe.storage.oserrors import USER_ERRNOS, as_user_error, user_os_errors
from cubepipe.storage.writers._staging import staging

from .. import conftest_fs

# The fixtures, also where tests/conftest.py does not import them.
tiny_fs = conftest_fs.tiny_fs
readonly_fs = conftest_fs.readonly_fs

#: store: 15 x 200 x 240 float32, 2.7 MiB as .tif/.npy; as 8-bit PNG codes 0.7 MiB
#: plus about 0.35 MiB of PNGs.
FULL_FOR_FLOATS = "2m"
FULL_FOR_PNGS = "900k"  # the codes fit (the room check passes), the PNGs do not


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest's ``small_store``, written once for this module."""
    cube = make_cube("small", seed=1, chunks={"y": 64, "x": 96})
    out = tmp_path_factory.mktemp("export-oserrors") / "small.zarr"
    return write_cube(cube, out, op="fixture", chunks={"y": 64, "x": 96})


def _error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("cubepipe: error: exporting to "), lines[0]
    return lines[0]


def _no_room_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "check_room", lambda out, nbytes: None)


@pytest.mark.parametrize("suffix", [".tif", ".npy"])
@pytest.mark.parametrize("when", ["up front", "while writing"])
def test_export_to_a_full_filesystem_is_one_line_and_leaves_no_file(
    cli, store: Path, tiny_fs, monkeypatch: pytest.MonkeyPatch, suffix: str, when: str
) -> None:
    target = tiny_fs(FULL_FOR_FLOATS)
    if when == "while writing":
        _no_room_check(monkeypatch)
    out = target / f"cube{suffix}"
    r = cli("--quiet", "export", str(store), "-o", str(out))
    line = _error_line(r)
    assert "no space left" in line.lower() and str(out) in line
    if when == "up front":
        assert "it needs 2.7 MiB" in line
    assert sorted(os.listdir(target)) == []  # neither the file nor a hidden partial one
    # All space back, once dask threads still busy with a block when the first one failed
    # have closed the (already unlinked) temporary file.
    deadline = time.monotonic() + 20
    while os.statvfs(target).f_bfree != os.statvfs(target).f_blocks:
        assert time.monotonic() < deadline, "the partial file's space was never released"
        time.sleep(0.05)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_png_jpeg_export_to_a_full_filesystem_leaves_no_file(
    cli, store: Path, tiny_fs, suffix: str
) -> None:
    target = tiny_fs(FULL_FOR_PNGS)
    out = target / f"cube{suffix}"
    # 15 bands -> 15 grey images + sidecars; the filesystem fills while Pillow writes.
    r = cli("--quiet", "export", str(store), "-o", str(out), "--scale", "minmax")
    line = _error_line(r)
    assert "no space left" in line.lower() and str(out) in line
    assert sorted(os.listdir(target)) == []


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".png"])
@pytest.mark.parametrize("when", ["up front", "while writing"])
def test_export_to_a_read_only_filesystem_is_one_line(
    cli,
    store: Path,
    readonly_fs: Path,
    monkeypatch: pytest.MonkeyPatch,
    suffix: str,
    when: str,
) -> None:
    if when == "while writing":
        _no_room_check(monkeypatch)
    out = readonly_fs / "sub" / f"cube{suffix}"  # even the directory cannot be made
    args = ["--scale", "minmax"] if suffix == ".png" else []
    r = cli("--quiet", "export", str(store), "-o", str(out), *args)
    line = _error_line(r)
    assert "read-only" in line and "choose a writable location" in line
    assert os.listdir(readonly_fs) == []


def test_a_fitting_export_still_works_on_a_small_filesystem(cli, store: Path, tiny_fs) -> None:
    """The room check refuses only what cannot fit: 4 of 15 bands (0.7 MiB) fit in 2 MiB."""
    out = tiny_fs(FULL_FOR_FLOATS) / "four.npy"
    r = cli("--quiet", "export", str(store), "-o", str(out), "--bands", "0,1,2,3")
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape == (4, 200, 240)
    assert sorted(os.listdir(out.parent)) == ["four.npy"]


# -- commit: fsync and rename failures ----------------------------------------------------


def test_a_failed_rename_removes_the_outputs_already_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finals = [tmp_path / f"img{i}.png" for i in range(3)]
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(PermissionError), staging() as st:
        for f in finals:
            st.temp(f).write_bytes(b"x")
    assert len(calls) == 3
    assert sorted(os.listdir(tmp_path)) == []


def test_a_failed_fsync_renames_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_fsync)
    with pytest.raises(OSError, match="No space"), staging() as st:
        st.temp(tmp_path / "a.tif").write_bytes(b"x")
        st.scratch(tmp_path / "a.npy", "codes").write_bytes(b"y")
    assert sorted(os.listdir(tmp_path)) == []


# -- the helper ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(USER_ERRNOS))
def test_user_os_errors_converts_what_a_user_can_fix(code: int) -> None:
    original = OSError(code, os.strerror(code), "/data/.out.partial-1234.tif")
    with pytest.raises(FileSystemError) as info, user_os_errors("/data/out.tif", "exporting to"):
        raise original
    err = info.value
    msg = str(err)
    assert isinstance(err, CubepipeError) and isinstance(err, OSError)
    assert err.__cause__ is original and err.errno == code
    assert msg.startswith("exporting to /data/out.tif failed: ")
    assert "\n" not in msg and "partial" not in msg and "[Errno" not in msg
    assert "; " in msg  # ...; what to do


def test_user_os_errors_lets_other_errors_through() -> None:
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")
    with pytest.raises(FileNotFoundError) as info, user_os_errors("/x", "reading"):
        raise missing
    assert info.value is missing
    with pytest.raises(ValueError), user_os_errors("/x", "reading"):
        raise ValueError("not an OSError")
    assert as_user_error(missing) is None and as_user_error(KeyError("k")) is None


def test_as_user_error_finds_the_cause_and_names_the_os_path_by_default() -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/mnt/x/c/0/0")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("a library wrapped it") from exc
    except RuntimeError as wrapped:
        err = as_user_error(wrapped, action="writing store")
    assert err is not None and err.__cause__ is full
    assert str(err) == (
        "writing store /mnt/x/c/0/0 failed: no space left on device; "
        "free space there or choose another location"
    )
    assert as_user_error(err) is err
