"""Opening a command's IN (a store, or any file `ingest` reads) and writing its OUT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import xarray as xr

from cubepipe.storage import open_cube, store_state

__all__ = ["in_argument", "open_in", "write_options"]


def open_in(path: str | Path, *, allow_incomplete: bool = False) -> xr.Dataset:
    """A store opens as a store; a file, directory of images or glob is streamed through
    the readers of :mod:`cubepipe.storage` (nothing is loaded whole)."""
    state = store_state(path)
    if state in ("complete", "incomplete", "foreign"):
        return open_cube(path, allow_incomplete=allow_incomplete)
    from cubepipe.storage.ingest import open_input  # noqa: PLC0415

    return open_input(str(path))


def in_argument(f: Any) -> Any:
    return click.argument("source", metavar="IN", type=str)(f)


def write_options(f: Any) -> Any:
    """``-o OUT``, ``--resume``, ``--overwrite``, ``--chunks`` for commands that write."""
    f = click.option("--chunks", help="Output chunks, e.g. y=512,x=512 (default: store's).")(f)
    f = click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")(f)
    f = click.option(
        "--resume", is_flag=True, help="Finish an interrupted run, skipping chunks written."
    )(f)
    return click.option(
        "-o", "--output", required=True, type=click.Path(path_type=Path), help="Output store."
    )(f)
