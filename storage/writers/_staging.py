"""Outputs that never look complete before they are: temporary names, then rename.

Every writer writes to a hidden temporary file in the destination directory and
:class:`Staging` renames all of them into place only after the last one is finished
(``os.replace``: atomic on one filesystem). On any error (a full disk included, while
writing or at the final ``fsync``) the temporary files are removed, so an interrupted
export leaves nothing under the final names and no hidden partial files.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import InputError, StoreExistsError

__all__ = ["Staging", "check_free", "staging"]


def check_free(paths: Iterable[Path], *, overwrite: bool) -> None:
    """Refuse existing outputs unless ``overwrite``; directories are never replaced."""
    for p in paths:
        if p.is_dir():
            raise InputError(f"{p} is a directory; choose an output file name")
        if p.exists() and not overwrite:
            raise StoreExistsError(
                f"{p} already exists: pass --overwrite (overwrite=True) to replace it"
            )


class Staging:
    """Temporary files for final outputs, renamed into place by :meth:`commit` in the
    order they were :meth:`add`-ed (sidecars before their images, so an image never
    appears without its sidecar); every temporary file is removed on :meth:`abort`."""

    def __init__(self) -> None:
        self._pairs: list[tuple[Path, Path]] = []
        self._temps: list[Path] = []
        self._token = secrets.token_hex(4)

    def temp_name(self, final: Path, tag: str = "partial") -> Path:
        """A hidden temporary path beside ``final`` that keeps its suffix (so format
        detection by suffix, as in Pillow, still works); removed on abort."""
        tmp = final.with_name(f".{final.stem}.{tag}-{self._token}{final.suffix}")
        self._temps.append(tmp)
        return tmp

    def add(self, tmp: Path, final: Path) -> None:
        """Rename ``tmp`` to ``final`` on commit (and remove it on abort)."""
        self._temps.append(tmp)
        self._pairs.append((tmp, final))

    def temp(self, final: Path) -> Path:
        """:meth:`temp_name` and :meth:`add` in one step."""
        tmp = self.temp_name(final)
        self.add(tmp, final)
        return tmp

    def scratch(self, near: Path, tag: str) -> Path:
        """A temporary working file beside ``near``, removed on commit and on abort."""
        return self.temp_name(near, tag)

    def commit(self) -> None:
        """Put every finished file on disk (``fsync``: where a full disk or an I/O error
        may still show up), then rename them into place; on any error remove the
        temporary files *and* the final files this commit already renamed, so a failed
        export leaves none of its outputs (a set of files is complete or absent)."""
        renamed: list[Path] = []
        try:
            for tmp, _final in self._pairs:
                # Blocks were written with pwrite and no per-block flushes; one fsync per
                # file here puts it on disk before it gets its real name.
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for tmp, final in self._pairs:
                os.replace(tmp, final)
                renamed.append(final)
        except BaseException:
            for final in renamed:
                with contextlib.suppress(OSError):
                    final.unlink()
            self.abort()
            raise
        self._pairs.clear()
        self.abort()  # what is left are scratch files

    def abort(self) -> None:
        for tmp in self._temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._temps.clear()
        self._pairs.clear()


@contextlib.contextmanager
def staging() -> Iterator[Staging]:
    """``with staging() as st: ... st.temp(final) ...``: commit on success, clean up on
    any exception (KeyboardInterrupt included)."""
    st = Staging()
    try:
        yield st
    except BaseException:
        st.abort()
        raise
    st.commit()  # aborts (and re-raises) if it fails
