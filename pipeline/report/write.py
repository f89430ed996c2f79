"""Writing a report page: :func:`write_report` (atomic on disk, one PUT on object storage)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from cubepipe.pipeline.report.build import build_report
from cubepipe.storage.errors import InputError, StoreExistsError
from cubepipe.storage.location import is_remote, remote_store
from cubepipe.storage.remote import put_bytes

__all__ = ["write_report"]


def write_report(
    store: str | Path, output: str | Path, *, overwrite: bool = False, **options: Any
) -> Path:
    """Write :func:`build_report` of ``store`` to ``output`` atomically (a temporary file
    beside it, then renamed), refusing to replace a file unless ``overwrite``; on object
    storage one PUT of the whole page."""
    if is_remote(output):
        put_bytes(
            remote_store(str(output)), build_report(store, **options).encode(), overwrite=overwrite
        )
        return output  # type: ignore[return-value]
    out = Path(output)
    if out.is_dir():
        raise InputError(f"{out} is a directory; give the report's file name, e.g. report.html")
    if out.exists() and not overwrite:
        raise StoreExistsError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise InputError(f"cannot write {out}: directory {out.parent} does not exist")
    text = build_report(store, **options)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
