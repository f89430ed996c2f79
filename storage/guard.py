"""Guards around an output: it never overlaps its inputs, and it has one writer at a time.

:func:`check_disjoint` refuses an output that is one of the inputs, contains one, or lies
inside one (paths resolved, symlinks followed, trailing slashes ignored), before any work
is done and before anything is deleted: ``standardize S.zarr -o S.zarr --overwrite`` would
otherwise remove the cube it is about to read.

:func:`output_lock` takes an exclusive lock on an output for the life of a writer: a file
``OUT.lock`` beside the output, created atomically with its contents (a hard link of a
file of the writer's own, which fails if the name exists; ``O_CREAT | O_EXCL`` where hard
links are not supported) and holding the writer's pid, host, process start time and
command.
A second writer exits with a :class:`~cubepipe.storage.errors.StoreLockedError` saying who
holds the lock; a lock left by a process that no longer runs on this host (pid gone, or
reused by another process) is stale and taken over. The lock is re-entrant within one
thread, so the CLI can take it before it opens the input and
:func:`~cubepipe.storage.write_cube` can take it again.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import InputError, StoreLockedError
from .location import is_remote

__all__ = ["check_disjoint", "lock_path", "output_lock", "resolve"]

#: A lock file that cannot be parsed is taken over only once it is this old (seconds):
#: younger, it may belong to a writer that created it and is writing its contents.
_UNREADABLE_GRACE_S = 10.0


def resolve(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute with every symlink followed (``realpath``), no trailing slash."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _candidates(source: str | os.PathLike[str]) -> list[str]:
    s = os.fspath(source)
    if os.path.lexists(s):
        return [s]
    return glob.glob(s) if glob.has_magic(s) else []


def check_disjoint(
    output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]
) -> None:
    """Refuse an ``output`` that is, contains or lies inside one of ``inputs``.

    Inputs may be files, directories, stores or glob patterns (each match is checked);
    inputs that do not exist are left to the reader to report.

    Raises
    ------
    InputError
        Naming the input and how the two paths overlap.
    """
    out = resolve(output)
    for source in inputs:
        if is_remote(source):
            continue  # object storage never overlaps a local output
        for cand in _candidates(source):
            inp = resolve(cand)
            if inp == out:
                how = "is the input"
            elif inp in out.parents:
                how = "lies inside the input"
            elif out in inp.parents:
                how = "contains the input"
            else:
                continue
            raise InputError(
                f"output {os.fspath(output)} {how} {os.fspath(source)}: writing it would "
                "destroy the data being read; choose an output path outside the input"
            )


def lock_path(output: str | os.PathLike[str]) -> Path:
    """The lock file of ``output``: ``OUT.lock`` beside it (``output`` resolved)."""
    out = resolve(output)
    return out.with_name(out.name + ".lock")


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    now = _process_start(pid)
    return start is None or now is None or now == start


def _holder() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "start": _process_start(pid),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:500],
    }


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _is_stale(path: Path, info: dict[str, Any] | None) -> bool:
    if info is None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > _UNREADABLE_GRACE_S
    if info.get("host") != socket.gethostname():
        return False  # cannot tell from here whether it still runs
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return True
    return not _alive(pid, info.get("start"))


_held: dict[tuple[Path, int], int] = {}
_held_guard = threading.Lock()


def _create(lock: Path) -> None:
    """Create ``lock`` holding this process's details, atomically: the contents are
    written to a file of our own, which is then hard-linked to the lock's name (``link``
    fails if the name exists, on local and network file systems alike), so no other
    process ever reads a lock file that is still empty. File systems without hard links
    get ``O_CREAT | O_EXCL`` and a write. Raises FileExistsError if the lock exists."""
    mine = lock.with_name(f"{lock.name}.{os.getpid()}-{threading.get_ident()}")
    try:
        with open(mine, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(_holder()))
        try:
            os.link(mine, lock)
            return
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, json.dumps(_holder()).encode())
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            mine.unlink()


def _take(lock: Path, output: str | os.PathLike[str]) -> None:
    for _ in range(5):
        try:
            _create(lock)
        except FileExistsError:
            info = _read_holder(lock)
            if _is_stale(lock, info):
                # Take over by renaming to a name of our own first: of two processes that
                # both found it stale, only one rename succeeds.
                with contextlib.suppress(FileNotFoundError):
                    aside = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
                    os.rename(lock, aside)
                    os.unlink(aside)
                continue
            who = (
                f"pid {info.get('pid')} on host {info.get('host')} since {info.get('since')}"
                f" ({info.get('command')})"
                if info
                else "another process"
            )
            raise StoreLockedError(
                f"{os.fspath(output)} is being written by {who}; wait for it to finish, or, "
                f"if that process is gone, delete {lock}"
            ) from None
        return
    raise StoreLockedError(f"could not take the lock {lock} (it keeps changing hands); retry")


@contextlib.contextmanager
def output_lock(output: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the exclusive write lock of ``output`` (re-entrant within one thread).

    Yields the lock file's path. The parent directory of ``output`` is created if needed
    (the lock lives there).

    Raises
    ------
    StoreLockedError
        Another live process holds the lock; the message names it.
    """
    lock = lock_path(output)
    key = (lock, threading.get_ident())
    with _held_guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if not reentered:
        lock.parent.mkdir(parents=True, exist_ok=True)
        _take(lock, output)
        with _held_guard:
            _held[key] = 1
    try:
        yield lock
    finally:
        with _held_guard:
            _held[key] -= 1
            last = _held[key] == 0
            if last:
                del _held[key]
        if last:
            info = _read_holder(lock)
            if info is not None and info.get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
