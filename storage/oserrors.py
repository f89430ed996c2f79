"""Operating-system errors a user can act on, as one-line :class:`FileSystemError`\\ s.

A full disk, a quota, a read-only mount, a missing permission or too many open files is
not a bug: the user can free space, pick another place or raise a limit. Wrap the code
that touches the filesystem::

    with user_os_errors(path, "writing store"):
        ...  # any OSError with an errno in USER_ERRNOS becomes a FileSystemError

and the error reads ``writing store /data/out.zarr failed: no space left on device;
free space there or choose another location``. Every other
``OSError`` (``ENOENT``, ``EIO``, ...) passes through unchanged. :func:`as_user_error`
does the conversion without raising, for code that already holds the exception (an error
re-raised from a dask task, the ``__cause__`` of another one).

Object storage has its own such errors (no credentials, an endpoint that does not answer,
access denied by the bucket's policy): :func:`as_user_error` makes them one line too,
saying where credentials and the endpoint come from (the backend's environment
variables, ``--storage-option``).
"""

from __future__ import annotations

import contextlib
import errno as E
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import FileSystemError

__all__ = ["USER_ERRNOS", "as_user_error", "os_error_message", "user_os_errors"]

#: errno -> (what happened, what to do about it).
_REASONS: dict[int, tuple[str, str]] = {
    E.ENOSPC: ("no space left on device", "free space there or choose another location"),
    E.EDQUOT: (
        "disk quota exceeded (no space left in your quota)",
        "free space in your quota or choose another location",
    ),
    E.EROFS: (
        "the filesystem is read-only",
        "choose a writable location (or remount the filesystem read-write)",
    ),
    E.EACCES: (
        "permission denied",
        "choose a location you may write to, or fix its permissions",
    ),
    E.EPERM: (
        "operation not permitted",
        "choose a location you may write to, or fix its permissions",
    ),
    E.EMFILE: (
        "too many open files in this process",
        "raise the limit (ulimit -n) or use fewer dask threads/workers",
    ),
    E.ENFILE: (
        "too many open files on this system",
        "close other programs' files or raise the system limit (fs.file-max)",
    ),
    E.EFBIG: (
        "the file is too large for this filesystem (e.g. FAT32 stops at 4 GiB)",
        "choose a location on another filesystem, or write less (fewer bands)",
    ),
}

#: The errnos :func:`user_os_errors` converts.
USER_ERRNOS = frozenset(_REASONS)


def os_error_message(
    exc: OSError, path: str | os.PathLike[str] | None, action: str = "", *, detail: str = ""
) -> str:
    """One line for ``exc``: ``"<action> <path> failed: <reason>; <what to do>"``.

    The file the OS named is added (``(at FILE)``) unless it is ``path``, inside it, or
    beside it (a temporary file); ``detail`` (e.g. how much space was needed) comes first
    in the parentheses. Any errno works; reason and advice are specific for
    :data:`USER_ERRNOS` (others get the OS's text and no advice)."""
    where = Path(path) if path is not None else None
    what = " ".join(part for part in (action, str(where) if where else "") if part)
    known = exc.errno in _REASONS
    reason, todo = _REASONS.get(exc.errno or -1, (exc.strerror or str(exc), ""))
    parts = [] if known or not exc.strerror or exc.strerror == reason else [exc.strerror]
    if isinstance(exc.filename, str | bytes | os.PathLike):
        named = Path(os.fsdecode(exc.filename))
        # Temporary files beside ``path`` and files inside it say nothing more.
        if where is None or not (
            named == where or where in named.parents or named.parent == where.parent
        ):
            parts.append(f"at {named}")
    if detail:
        parts.insert(0, detail)
    line = f"{what} failed: {reason}" if what else reason
    if parts:
        line += f" ({'; '.join(parts)})"
    return f"{line}; {todo}" if todo else line


_OPTION_HINT = "--storage-option KEY=VALUE (or CUBEPIPE_STORAGE_OPTIONS)"

#: Object storage errors by class name (botocore, aiohttp, google-auth, azure: the
#: backends are optional, so they are not imported): (what happened, what to do).
_REMOTE_REASONS: dict[str, tuple[str, str]] = {
    "NoCredentialsError": (
        "no object storage credentials were found",
        "set them in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
        f"AWS_PROFILE for s3://), pass them with {_OPTION_HINT} (key=..., secret=...), "
        "or use anon=true for a public bucket",
    ),
    "PartialCredentialsError": (
        "the object storage credentials are incomplete",
        "set both the key and the secret (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
    ),
    "DefaultCredentialsError": (
        "no Google Cloud credentials were found",
        "set GOOGLE_APPLICATION_CREDENTIALS, or pass token=anon for a public bucket",
    ),
    "EndpointConnectionError": (
        "the object storage endpoint did not answer",
        "check the endpoint (AWS_ENDPOINT_URL, or --storage-option endpoint_url=...) and "
        "the network",
    ),
    "ConnectTimeoutError": (
        "connecting to the object storage endpoint timed out",
        "check the endpoint (AWS_ENDPOINT_URL, or --storage-option endpoint_url=...) and "
        "the network",
    ),
    "ClientConnectorError": (
        "the object storage endpoint did not answer",
        f"check the endpoint and the network ({_OPTION_HINT})",
    ),
}


def _remote_error(cur: BaseException) -> FileSystemError | None:
    names = [cls.__name__ for cls in type(cur).__mro__]
    for name in names:
        if name in _REMOTE_REASONS:
            reason, todo = _REMOTE_REASONS[name]
            text = " ".join(str(cur).split())
            return FileSystemError(f"{reason} ({text}); {todo}")
    module = type(cur).__module__ or ""
    # s3fs/gcsfs/adlfs raise PermissionError without an errno for a refusal by the server
    if isinstance(cur, PermissionError) and cur.errno is None:
        text = " ".join(str(cur).split())
        return FileSystemError(
            f"object storage refused access ({text}); check that the credentials allow "
            "reading (and, for an output, writing) there"
        )
    if "ClientError" in names and module.startswith("botocore"):
        text = " ".join(str(cur).split())
        return FileSystemError(f"object storage refused the request ({text})")
    return None


def as_user_error(
    exc: BaseException, path: str | os.PathLike[str] | None = None, action: str = ""
) -> FileSystemError | None:
    """The :class:`FileSystemError` for ``exc``, or None if it is not one a user can act on.

    ``exc`` itself is returned if it already is a ``FileSystemError``. Otherwise the
    first ``OSError`` with an errno in :data:`USER_ERRNOS` among ``exc`` and its explicit
    causes (``raise ... from``) is converted, naming ``path`` (default: the file the OS
    named) and ``action`` (e.g. ``"writing store"``). The new error's ``__cause__`` is
    that ``OSError``.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, FileSystemError):
            return cur
        if isinstance(cur, OSError) and cur.errno in USER_ERRNOS:
            where = path if path is not None else cur.filename
            err = FileSystemError(os_error_message(cur, where, action), errno=cur.errno, path=where)
            err.__cause__ = cur
            return err
        remote = _remote_error(cur)
        if remote is not None:
            remote.__cause__ = cur
            return remote
        cur = cur.__cause__
    return None


@contextlib.contextmanager
def user_os_errors(path: str | os.PathLike[str] | None, action: str = "") -> Iterator[None]:
    """Convert the OSErrors a user can act on (:data:`USER_ERRNOS`) raised inside into a
    one-line :class:`FileSystemError` naming ``action`` and ``path``, chained ``from``
    the original (also when such an OSError is the ``__cause__`` of another exception);
    everything else propagates unchanged."""
    try:
        yield
    except Exception as exc:
        err = as_user_error(exc, path, action)
        if err is None or err is exc:
            raise
        raise err from exc
