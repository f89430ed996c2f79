"""The reader contract: every input format opens as a lazy, dask-backed Dataset.

A reader is registered once in :data:`READERS` with the suffixes it claims and a sniffer
that recognises its files by their first bytes. :func:`open_source` picks one by content
first, then by suffix (``format=`` overrides both), and returns a Dataset with one data
variable ``cube`` whose last three dims are ``("band", "y", "x")`` (plus a leading
``image`` or ``frame`` dim for collections and videos), backed by a dask array whose
chunks are read from the file only when computed. Readers never load the whole input.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

from ..errors import FormatError, InputError, StoreNotFoundError

__all__ = [
    "OPTIONS",
    "READERS",
    "ReaderSpec",
    "check_input",
    "detect_format",
    "open_source",
    "register",
]

#: How many leading bytes a sniffer sees.
SNIFF_BYTES = 64


@dataclass(frozen=True)
class ReaderSpec:
    """One input format.

    Attributes
    ----------
    name
        The ``--format`` value (``npy``, ``tiff``, ``png``, ``jpeg``, ``envi``, ``video``).
    suffixes
        Lower-case file suffixes claimed, with the dot (``.tif``).
    sniff
        ``sniff(first_bytes, path) -> bool``: does this file look like the format?
    open
        ``open(path, *, chunks, **options) -> xarray.Dataset``: lazy, as the module
        docstring says. ``chunks`` maps dim names to the chunk sizes the store will use.
    options
        The keyword options ``open`` takes besides ``chunks`` (:data:`OPTIONS`).
    """

    name: str
    suffixes: tuple[str, ...]
    sniff: Callable[[bytes, Path], bool]
    open: Callable[..., xr.Dataset]
    aliases: tuple[str, ...] = field(default=())
    options: tuple[str, ...] = field(default=())


#: Reader options :func:`open_source` passes on: the command-line option that sets each,
#: and whether a reader without it may ignore it (``georef``: a PNG has none to skip).
OPTIONS = {"georef": ("--no-georef", True), "variable": ("--variable", False)}
OPTIONS["dims"] = ("--dims", False)


READERS: dict[str, ReaderSpec] = {}


def register(spec: ReaderSpec) -> ReaderSpec:
    """Add a reader to :data:`READERS` (one per name)."""
    READERS[spec.name] = spec
    return spec


def _by_name(name: str) -> ReaderSpec:
    key = name.lower()
    for spec in READERS.values():
        if key == spec.name or key in spec.aliases:
            return spec
    known = ", ".join(sorted(READERS))
    raise InputError(f"unknown --format {name!r}; expected auto or one of: {known}")


_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_input(path: str | os.PathLike) -> os.stat_result:
    """Refuse, before anything opens it, an input that is not a regular file or a directory.

    Reading a FIFO waits for a writer forever and a character device (``/dev/zero``,
    ``/dev/urandom``) never ends, so readers never see them. A dangling or looping
    symbolic link is named as such. Returns the ``os.stat`` result of the target.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise InputError(
                f"{p}: is a symbolic link to {os.readlink(p)}, which does not exist; fix the "
                "link or pass the file it should point to"
            ) from None
        raise StoreNotFoundError(p, what="input file") from None
    except OSError as exc:  # a symlink loop, no permission, a name too long
        raise InputError(
            f"{p}: cannot be opened ({exc.strerror or exc}); check the path, its symbolic "
            "links and its permissions"
        ) from None
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return st
    kind = next((what for test, what in _SPECIAL if test(st.st_mode)), "not a regular file")
    raise InputError(
        f"{p}: is {kind}, not a regular file; cubepipe reads only files whose size is known "
        "up front: save the data to a file first and pass that"
    )


def detect_format(path: str | Path) -> ReaderSpec:
    """The reader for ``path``: by content (magic bytes) first, then by suffix."""
    p = Path(path)
    check_input(p)
    if p.is_file():
        if p.stat().st_size == 0:
            raise FormatError(f"{p}: the file is empty (0 bytes); nothing to ingest")
        with p.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
        for spec in READERS.values():
            if spec.sniff(head, p):
                return spec
    suffix = p.suffix.lower()
    for spec in READERS.values():
        if suffix in spec.suffixes:
            return spec
    known = ", ".join(sorted({s for r in READERS.values() for s in r.suffixes}))
    raise FormatError(
        f"{p}: unknown format (suffix {suffix or 'none'!r} and content match no reader); "
        f"known suffixes: {known}; pass --format to choose one"
    )


def open_source(
    path: str | Path,
    *,
    format: str = "auto",
    chunks: Mapping[str, int] | None = None,
    **options: Any,
) -> xr.Dataset:
    """Open one input file lazily with the reader for it (see module docstring).

    ``options`` (:data:`OPTIONS`; None means not given) go to readers that take them; a
    reader-specific one (``variable``) given for another format is an InputError.
    """
    check_input(path)
    spec = detect_format(path) if format in ("auto", None) else _by_name(format)
    p = Path(path)
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        flag, ignorable = OPTIONS[key]
        if key not in spec.options and not ignorable:
            takes = ", ".join(sorted(s.name for s in READERS.values() if key in s.options))
            raise InputError(f"{p}: {flag} applies to {takes} inputs only; this is {spec.name}")
    passed = {k: v for k, v in given.items() if k in spec.options}
    return spec.open(p, chunks=dict(chunks or {}), **passed)
