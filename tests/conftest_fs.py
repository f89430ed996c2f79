"""Fixtures for real filesystem failures: a tiny tmpfs that fills up, a read-only one.

They mount tmpfs filesystems (``mount(2)`` through libc, so no ``mount`` binary is
needed), which takes root with CAP_SYS_ADMIN: elsewhere (a normal user, a container
without that capability) every test using them is skipped, saying why. Each mount lives
under the test's ``tmp_path`` and is unmounted at teardown (lazily if a file is still
open).

Imported by ``tests/conftest.py`` (``from .conftest_fs import readonly_fs, tiny_fs``), so
every test can ask for them::

    def test_full_disk(tiny_fs):
        d = tiny_fs("2m")  # a 2 MiB filesystem, empty
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["mount_tmpfs", "readonly_fs", "tiny_fs", "unmount"]

_MS_RDONLY = 1
_MNT_DETACH = 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount_tmpfs(target: Path, size: str, *, read_only: bool = False) -> None:
    """Mount an empty tmpfs of ``size`` (``"2m"``, ``"512k"``: tmpfs's ``size=`` option)
    on the existing directory ``target``; ``pytest.skip`` where mounting is not allowed."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); not running as root")
    options = f"size={size},mode=0777".encode()
    flags = _MS_RDONLY if read_only else 0
    libc = _libc()
    if libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", flags, options) != 0:
        err = ctypes.get_errno()
        pytest.skip(
            f"cannot mount a tmpfs on {target}: {os.strerror(err)} (needs CAP_SYS_ADMIN, "
            "e.g. a container started with --privileged or --cap-add SYS_ADMIN)"
        )


def unmount(target: Path) -> None:
    """Unmount ``target`` (lazily if it is busy)."""
    libc = _libc()
    if libc.umount2(os.fsencode(target), 0) != 0:
        libc.umount2(os.fsencode(target), _MNT_DETACH)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tiny_fs(size) -> Path``: an empty, writable tmpfs of ``size`` (e.g. ``"2m"``),
    mounted for this test only."""
    mounted: list[Path] = []

    def make(size: str = "2m") -> Path:
        target = tmp_path / f"tiny-fs-{len(mounted)}"
        target.mkdir()
        mount_tmpfs(target, size)
        mounted.append(target)
        return target

    yield make
    for target in reversed(mounted):
        unmount(target)


@pytest.fixture
def readonly_fs(tmp_path: Path) -> Iterator[Path]:
    """An empty tmpfs mounted read-only (every write fails with EROFS), for this test."""
    target = tmp_path / "readonly-fs"
    target.mkdir()
    mount_tmpfs(target, "1m", read_only=True)
    yield target
    unmount(target)
