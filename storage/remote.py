"""Writing cube stores on object storage: the lock, and what replaces local file operations.

Object stores have no rename and no directory to lock, so:

- **One writer at a time**: ``URL.lock`` is created with a conditional write (it fails
  if the object exists: S3's ``If-None-Match``, as s3fs's ``"xb"`` mode sends it). It
  records the writer's host, pid and start time; a lock left by a process of this host
  that is no longer running is taken over, one from another host is reported with how to
  remove it. Re-entrant within a thread (:func:`~cubepipe.storage.store.claim_output`
  holds it while a command fits, :func:`~cubepipe.storage.store.write_cube` again).
- **Completion**: as on disk, the ``complete`` marker is written last; a killed writer
  leaves a store that is refused until ``--resume`` finishes it (a chunk counts as
  written only if its object exists and decodes, checksum included).
- **--overwrite** deletes the old store first (there is no atomic swap on object
  storage): a failed run leaves an incomplete store, never a complete-looking one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from .errors import InputError, StoreLockedError

__all__ = [
    "download_inputs",
    "put_bytes",
    "remote_fs",
    "remote_lock",
    "upload_files",
    "zarr_store",
]

_HELD: dict[tuple[str, int], int] = {}  # (url, thread) -> depth: re-entrant per thread
_HELD_LOCK = threading.Lock()


def remote_fs(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it."""
    import fsspec  # noqa: PLC0415  (a dependency of zarr; the backend was checked)

    from .location import options_for  # noqa: PLC0415

    fs, root = fsspec.core.url_to_fs(url, **options_for(url))
    return fs, root


def zarr_store(url: str, *, read_only: bool) -> Any:
    """zarr-python's fsspec store for ``url``, with the storage options in force."""
    from zarr.storage import FsspecStore  # noqa: PLC0415

    from .location import options_for  # noqa: PLC0415

    return FsspecStore.from_url(url, storage_options=options_for(url), read_only=read_only)


def _alive_here(owner: dict[str, Any]) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # cannot tell: assume alive
    try:
        os.kill(int(owner.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


@contextlib.contextmanager
def remote_lock(url: str) -> Iterator[None]:
    """Hold ``URL.lock`` while writing the store at ``url`` (see the module docs).

    Raises
    ------
    StoreLockedError
        Another live writer holds it (or one on another host, which cannot be checked).
    """
    key = (url, threading.get_ident())
    with _HELD_LOCK:
        if _HELD.get(key):
            _HELD[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _HELD_LOCK:
                _HELD[key] -= 1
        return
    fs, root = remote_fs(url)
    lock = f"{root}.lock"
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for attempt in (1, 2):
        try:
            with fs.open(lock, "xb") as f:
                f.write(json.dumps(me).encode())
            break
        except FileExistsError:
            try:
                owner = json.loads(fs.cat_file(lock))
            except (OSError, ValueError):
                owner = {}
            if attempt == 1 and owner and not _alive_here(owner):
                fs.rm(lock)  # its writer was killed: take over (and --resume its store)
                continue
            raise StoreLockedError(
                f"{url} is being written by another process (host {owner.get('host', '?')}, "
                f"pid {owner.get('pid', '?')}, since {owner.get('started', '?')}); if no "
                f"such process is running, delete {url}.lock and retry"
            ) from None
        except OSError as exc:
            raise InputError(
                f"{url}: cannot create its lock object ({type(exc).__name__}: {exc}); check "
                "the bucket exists and the credentials allow writing"
            ) from None
    with _HELD_LOCK:
        _HELD[key] = 1
    try:
        yield
    finally:
        with _HELD_LOCK:
            _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            fs.rm(lock)


def put_bytes(url: str, data: bytes, *, overwrite: bool) -> None:
    """Write one object (a single PUT: readers see the old object or the new one, never a
    part); refuse an existing one unless ``overwrite``."""
    from .errors import StoreExistsError  # noqa: PLC0415

    fs, path = remote_fs(url)
    if not overwrite and fs.exists(path):
        raise StoreExistsError(f"{url} exists; pass --overwrite to replace it")
    fs.pipe_file(path, data)


def upload_files(files: list[Any], url_dir: str, *, overwrite: bool) -> list[str]:
    """Put local ``files`` under the object storage prefix ``url_dir`` (same names);
    every target is checked first, so an existing one (without ``overwrite``) stops the
    upload before anything is written. Returns the URLs."""
    from .errors import StoreExistsError  # noqa: PLC0415

    fs, prefix = remote_fs(url_dir)
    targets = [(str(f), f"{prefix.rstrip('/')}/{os.path.basename(str(f))}") for f in files]
    if not overwrite:
        for _, target in targets:
            if fs.exists(target):
                raise StoreExistsError(
                    f"{url_dir.rstrip('/')}/{os.path.basename(target)} exists; pass "
                    "--overwrite to replace it"
                )
    for local, target in targets:
        fs.put_file(local, target)
    scheme = url_dir.split("://", 1)[0]
    return [f"{scheme}://{t}" for _, t in targets]


def download_inputs(sources: list[str], into: str) -> list[str]:
    """Copy the object storage ``sources`` (URLs of files; a ``*`` pattern matches many)
    into the local directory ``into``, keeping names; local sources are returned as
    they are. Ingest's readers read local files (memory maps, seeks); on object storage
    the files are copied first, so the temporary disk holds them while ingest runs."""
    from .errors import InputError  # noqa: PLC0415
    from .location import is_remote, remote_store  # noqa: PLC0415

    out: list[str] = []
    for src in sources:
        if not is_remote(src):
            out.append(src)
            continue
        remote_store(src)  # a known scheme, its backend installed
        fs, path = remote_fs(src)
        matches = sorted(fs.glob(path)) if any(c in path for c in "*?[") else [path]
        matches = [m for m in matches if fs.isfile(m)]
        if not matches:
            raise InputError(f"{src}: no such file on object storage")
        for m in matches:
            local = os.path.join(into, os.path.basename(m))
            if os.path.exists(local):
                raise InputError(f"{src}: two inputs are named {os.path.basename(m)}")
            fs.get_file(m, local)
            out.append(local)
    return out
