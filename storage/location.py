"""Where a store or file named by the user lives: a local path, or a URL.

``file://`` URLs name local paths and are turned into them. Other URLs (``s3://``,
``gs://``, ``az://``, ``memory://``, ...) name object storage: cube stores there are read
and written (:func:`remote_store`, through zarr's fsspec store, see
:mod:`cubepipe.storage.remote`; credentials and endpoint from the environment as the
backend reads them, e.g. ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``); the CLI copies
``ingest``'s input files from there and uploads ``export``/``report`` files there
(:mod:`cubepipe.storage.remote`). Options for the backend (an endpoint, a profile,
``anon``) come from the environment as the backend reads them, and from
:func:`set_storage_options` / :func:`storage_options` (the CLI's ``--storage-option
KEY=VALUE``). Where a local file is needed and a URL is given,
:func:`local_path` refuses it in one line instead of taking it for a relative path
(``s3://b/x.zarr`` used to become the local directory ``./s3:/b/x.zarr``, exit 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import InputError, MissingDependencyError

__all__ = [
    "is_remote",
    "is_url",
    "local_path",
    "options_for",
    "parse_storage_options",
    "remote_store",
    "set_storage_options",
    "storage_options",
]

#: URL scheme -> the fsspec backend package that reads it (in the ``cloud`` extra).
BACKENDS = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
    "memory": "fsspec",
}

# A scheme of two or more letters (one letter is a Windows drive: C:\data).
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")


#: Options handed to every object storage backend (fsspec's ``storage_options``).
_OPTIONS: dict[str, Any] = {}


def set_storage_options(options: Mapping[str, Any] | None) -> None:
    """Use ``options`` (fsspec ``storage_options``: ``endpoint_url``, ``profile``, ``anon``,
    ``client_kwargs``, ...) for every object storage URL from now on; None clears them.
    They are handed to the backend of whichever scheme a URL names."""
    _OPTIONS.clear()
    _OPTIONS.update(options or {})


@contextlib.contextmanager
def storage_options(**options: Any) -> Iterator[None]:
    """:func:`set_storage_options` for the duration of a ``with`` block, e.g.
    ``with storage_options(endpoint_url="http://minio:9000"): open_cube("s3://b/x.zarr")``."""
    old = dict(_OPTIONS)
    set_storage_options({**old, **options})
    try:
        yield
    finally:
        set_storage_options(old)


def options_for(url: str) -> dict[str, Any]:
    """The storage options for ``url`` (a copy)."""
    return json.loads(json.dumps(_OPTIONS)) if _OPTIONS else {}


def parse_storage_options(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` texts as storage options. A VALUE that reads as JSON (``true``,
    ``3``, ``{"a": 1}``) is taken as such, anything else as a string; a dotted KEY nests
    (``client_kwargs.region_name=eu-west-1``).

    Raises
    ------
    InputError
        An item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise InputError(
                f"--storage-option {item!r}: expected KEY=VALUE, e.g. "
                "endpoint_url=http://127.0.0.1:9000 or anon=true"
            )
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        node = out
        *parents, last = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"--storage-option {item!r}: {part} was already given a value")
            node = child
        node[last] = value
    return out


def is_url(value: str | os.PathLike[str]) -> bool:
    """Whether ``value`` is written as a URL (``scheme://...``)."""
    return isinstance(value, str) and _URL.match(value) is not None


def is_remote(value: str | os.PathLike[str]) -> bool:
    """Whether ``value`` is a URL of object storage (any scheme but ``file``)."""
    return is_url(value) and urlsplit(str(value)).scheme.lower() != "file"


def remote_store(value: str) -> str:
    """``value``, an object storage URL of a store to read, checked: a scheme cubepipe
    reads, with its fsspec backend installed; trailing slashes dropped.

    Raises
    ------
    InputError
        A scheme with no known backend.
    MissingDependencyError
        The backend (s3fs, gcsfs, adlfs) is not installed: ``cubepipe[cloud]``.
    """
    scheme = urlsplit(value).scheme.lower()
    module = BACKENDS.get(scheme)
    if module is None:
        raise InputError(
            f"{value}: cubepipe reads stores on s3://, gs://, az:// (abfs://) and "
            f"memory://, not {scheme}://"
        )
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec(module) is None:
        extra = "cloud" if module == "s3fs" else None  # the extra carries S3's backend
        raise MissingDependencyError(f"reading {scheme}:// stores", module, extra)
    return value.rstrip("/")


def local_path(value: str | os.PathLike[str], what: str = "path") -> Path:
    """``value`` as a local path: a path as given, or a ``file://`` URL's path.

    Raises
    ------
    InputError
        ``value`` is another URL (object storage), or a ``file://`` URL naming a host.
    """
    if not is_url(value):
        return Path(value)
    text = str(value)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InputError(
                f"{text}: a file:// URL of another host ({parts.netloc}); give a path on this "
                "machine (file:///path or /path)"
            )
        return Path(unquote(parts.path))
    raise InputError(
        f"{text}: {what} on object storage ({scheme}://) is not supported yet (cubepipe "
        "reads and writes cube stores there; other files must be local or on a mounted "
        "file system); use a local path, or mount the bucket (e.g. s3fs, rclone mount) "
        "and give the mounted path"
    )
