"""Opening a command's IN (a store, or any file `ingest` reads) and writing its OUT."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click
import xarray as xr

from cubepipe.pipeline.cli.runner.resume import invocation
from cubepipe.storage import open_cube, parse_chunks, store_state, write_cube
from cubepipe.storage.store import claim_output

from ..scheduling import keep_between_passes

__all__ = ["in_argument", "open_in", "provenance", "write_options", "write_output"]


def open_in(
    path: str | Path, *, allow_incomplete: bool = False, two_pass_on: str | None = None
) -> xr.Dataset:
    """A store opens as a store; a file, directory of images or glob is streamed through
    the readers of :mod:`cubepipe.storage` (nothing is loaded whole).

    ``two_pass_on``: the scheduler of a command that will read a store twice (fit, then
    apply); chunks of the first read are kept for the second within
    :func:`~cubepipe.pipeline.scheduling.keep_between_passes`.
    """
    state = store_state(path)
    if state in ("complete", "incomplete", "foreign"):
        keep = keep_between_passes(two_pass_on, path) if two_pass_on is not None else 0
        return open_cube(path, allow_incomplete=allow_incomplete, keep_bytes=keep)
    from cubepipe.storage.ingest import open_input  # noqa: PLC0415

    return open_input(str(path))


def in_argument(f: Any) -> Any:
    return click.argument("source", metavar="IN", type=str)(f)


#: Options naming what a command reads, besides IN: an output must not overlap them.
_INPUT_OPTIONS = ("source", "sources", "stats_from", "stats", "model_from")


def _claimed(f: Any) -> Any:
    """Run command ``f`` holding its output (see :func:`~cubepipe.storage.claim_output`):
    an output that overlaps an input, or exists without --resume/--overwrite, is refused
    before IN is opened, and a second writer of the same output fails at once."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        ctx.meta["cubepipe.allow_nonfinite"] = kwargs.pop("allow_nonfinite", False)
        inputs: list[str] = []
        for key in _INPUT_OPTIONS:
            value = kwargs.get(key)
            if isinstance(value, str | Path):
                inputs.append(str(value))
            elif isinstance(value, list | tuple):
                inputs.extend(str(v) for v in value)
        with claim_output(
            kwargs["output"],
            inputs,
            resume=bool(kwargs.get("resume")),
            overwrite=bool(kwargs.get("overwrite")),
        ):
            return f(*args, **kwargs)

    return wrapper


def write_options(f: Any) -> Any:
    """``-o OUT``, ``--resume``, ``--overwrite``, ``--chunks``, ``--allow-nonfinite`` for
    commands that write a store; the output is checked and locked before the command runs."""
    f = _claimed(f)
    f = click.option(
        "--allow-nonfinite",
        is_flag=True,
        help="Write +-inf results (an overflow of the output dtype) instead of failing; "
        "their count is recorded in the store's history.",
    )(f)
    f = click.option("--chunks", help="Output chunks, e.g. y=512,x=512 (default: store's).")(f)
    f = click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")(f)
    f = click.option(
        "--resume", is_flag=True, help="Finish an interrupted run, skipping chunks written."
    )(f)
    return click.option(
        "-o", "--output", required=True, type=click.Path(path_type=Path), help="Output store."
    )(f)


def provenance() -> dict[str, Any]:
    """The running command's invocation (``{"cli": ...}``) for its store's history entry,
    which ``cubepipe run --resume`` compares with a step (see
    :func:`~cubepipe.pipeline.cli.runner.resume.invocation`); empty outside a click command."""
    ctx = click.get_current_context(silent=True)
    return {"cli": invocation(ctx)} if ctx is not None else {}


def write_output(
    state: Any,
    ds: xr.Dataset,
    output: Path,
    *,
    op: str,
    inputs: list[str],
    chunks: str | None,
    resume: bool,
    overwrite: bool,
    base_chunks: dict[str, int] | None = None,
    **kwargs: Any,
) -> Path:
    """:func:`~cubepipe.storage.write_cube` with what :func:`write_options` collected
    (``--chunks`` on top of ``base_chunks``, ``--resume``, ``--overwrite``); the command's
    device and invocation are recorded in the provenance."""
    return write_cube(
        ds,
        output,
        op=op,
        inputs=inputs,
        device=str(state.device),
        durable=state.durable,
        chunks={**(base_chunks or {}), **parse_chunks(chunks)},
        resume=resume,
        overwrite=overwrite,
        provenance=provenance(),
        allow_nonfinite=_allow_nonfinite(),
        **kwargs,
    )


def _allow_nonfinite() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get("cubepipe.allow_nonfinite"))
