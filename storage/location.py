"""Where a store or file named by the user lives: a local path, or a URL.

``file://`` URLs name local paths and are turned into them. Other URLs (``s3://``,
``gs://``, ``az://``, ``http(s)://``, ``memory://``, ...) name object storage, which the
store layer does not read or write yet: they are refused in one line instead of being
taken for a relative path (``s3://b/x.zarr`` used to become the local directory
``./s3:/b/x.zarr``, exit 0, the bucket untouched).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import InputError

__all__ = ["is_url", "local_path"]

# A scheme of two or more letters (one letter is a Windows drive: C:\data).
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")


def is_url(value: str | os.PathLike[str]) -> bool:
    """Whether ``value`` is written as a URL (``scheme://...``)."""
    return isinstance(value, str) and _URL.match(value) is not None


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
        f"{text}: {what} on object storage ({scheme}://) is not supported yet: cubepipe "
        "reads and writes local or network-mounted paths; copy the data to such a path or "
        "mount the bucket (e.g. s3fs, rclone mount) and give the mounted path"
    )
