"""``cubepipe info STORE [--json]``."""

from __future__ import annotations

import json

import click

from cubepipe.storage import describe

from ._app import cli
from ._format import render_info


@cli.command()
@click.argument("store", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON (stable keys).")
def info(store: str, as_json: bool) -> None:
    """Describe STORE: dims, dtypes, chunks, codecs, size on disk, completion, history.

    Reads metadata only, so it is instant on any size of store.
    """
    d = describe(store)
    click.echo(json.dumps(d, indent=2) if as_json else render_info(d))
