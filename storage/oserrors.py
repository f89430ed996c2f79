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
