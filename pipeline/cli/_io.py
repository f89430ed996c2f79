"""Opening a command's IN (a store, or any file `ingest` reads) and writing its OUT."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cubepipe.storage.errors import InputError
from cubepipe.storage.layout import parse_chunks, parse_shards
from cubepipe.storage.location import is_remote, is_url, local_path

from ._jobs import allow_nonfinite, claims_output, provenance

if TYPE_CHECKING:
    import xarray as xr

    from cubepipe.storage.invalid import InvalidRule

# The options are defined with click alone; xarray, zarr and dask are imported when a job
# runs (`cubepipe CMD --help` need not import them).

__all__ = [
    "LocalPath",
    "apply_invalid",
    "in_argument",
    "invalid_params",
    "mask_options",
    "open_in",
    "write_options",
    "write_output",
]


def open_in(
    path: str | Path, *, allow_incomplete: bool = False, two_pass_on: str | None = None
) -> xr.Dataset:
    """A store opens as a store; a file, directory of images or glob is streamed through
    the readers of :mod:`cubepipe.storage` (nothing is loaded whole). In a job with
    :func:`mask_options`, pixels its ``--invalid-*`` rule names are masked
    (:func:`apply_invalid`).

    ``two_pass_on``: the scheduler of a command that will read a store twice (fit, then
    apply); chunks of the first read are kept for the second within
    :func:`~cubepipe.pipeline.scheduling.keep_between_passes`.
    """
    from cubepipe.storage.store import open_cube, store_state  # noqa: PLC0415  (on use)

    from ..scheduling import keep_between_passes  # noqa: PLC0415

    state = store_state(path)
    if state in ("complete", "incomplete", "foreign"):
        keep = keep_between_passes(two_pass_on, path) if two_pass_on is not None else 0
        ds = open_cube(path, allow_incomplete=allow_incomplete, keep_bytes=keep)
        return apply_invalid(ds, source=str(path))
    from cubepipe.storage.ingest import open_input  # noqa: PLC0415

    return apply_invalid(open_input(str(path)), source=str(path))


class LocalPath(click.Path):
    """``click.Path`` that takes ``file://`` URLs as local paths and refuses other URLs
    in one line (``click.Path`` would turn ``s3://b/x`` into the local ``s3:/b/x``);
    with ``remote_ok`` an object storage URL is passed on as text (a store to read)."""

    def __init__(self, *args: Any, remote_ok: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.remote_ok = remote_ok

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if self.remote_ok and isinstance(value, str) and is_remote(value):
            return value
        if isinstance(value, str) and is_url(value):
            try:
                value = str(local_path(value, "a path"))
            except InputError as exc:
                self.fail(str(exc), param, ctx)
        return super().convert(value, param, ctx)


def in_argument(f: Any) -> Any:
    return click.argument("source", metavar="IN", type=str)(f)


def check_shards(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse a bad ``--shards`` while parsing, before any work."""
    try:
        parse_shards(value)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def write_options(f: Any) -> Any:
    """``-o OUT``, ``--resume``, ``--overwrite``, ``--chunks``, ``--allow-nonfinite`` for
    a job that writes a store; :func:`~cubepipe.pipeline.cli._jobs.run_job` checks and
    locks the output before the job runs."""
    f = claims_output(f)
    f = click.option(
        "--allow-nonfinite",
        is_flag=True,
        help="Write +-inf results (an overflow of the output dtype) instead of failing; "
        "their count is recorded in the store's history.",
    )(f)
    f = click.option(
        "--shards",
        callback=check_shards,
        help="zarr v3 shards: many chunks per file, e.g. y=4096,x=4096 (whole chunks); auto "
        "(image/frame stores: ~256 MiB of images per file); none (a file per chunk). "
        "Default: auto for image/frame stores of 4096 chunks or more, else none.",
    )(f)
    f = click.option("--chunks", help="Output chunks, e.g. y=512,x=512 (default: store's).")(f)
    f = click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")(f)
    f = click.option(
        "--resume", is_flag=True, help="Finish an interrupted run, skipping chunks written."
    )(f)
    return click.option(
        "-o",
        "--output",
        required=True,
        type=LocalPath(path_type=Path, remote_ok=True),
        help="Output store (a path, or s3://...).",
    )(f)


def json_option(f: Any) -> Any:
    """``--json``: the command's result as one JSON object on stdout (nothing else there;
    status lines stay on stderr). The keys are documented in docs/cli-json.md."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print the result as one JSON object on stdout (keys: docs/cli-json.md).",
    )(f)


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
    shards: str | None = None,
    **kwargs: Any,
) -> Path:
    """:func:`~cubepipe.storage.write_cube` with what :func:`write_options` collected
    (``--chunks`` on top of ``base_chunks``, ``--resume``, ``--overwrite``); the command's
    device and invocation are recorded in the provenance. Chunks computed on the GPU come
    to the host here, one copy per chunk as it is written. An output of a georeferenced
    input (``inputs[0]``) is georeferenced like it (PCA scores and reconstructions are
    built without coordinates; see :func:`~cubepipe.storage.geo.carry_georef`)."""
    from cubepipe.storage.geo import carry_georef  # noqa: PLC0415  (on use)
    from cubepipe.storage.store import write_cube  # noqa: PLC0415

    from ..backend import to_host  # noqa: PLC0415

    if inputs:
        ds = carry_georef(ds, inputs[0])
    if _rule.get() is not None:  # the rule in the history entry's params, beside the options
        kwargs["params"] = {**(kwargs.get("params") or {}), **invalid_params()}
    return write_cube(
        to_host(ds),
        output,
        op=op,
        inputs=inputs,
        device=str(state.device),
        durable=state.durable,
        chunks={**(base_chunks or {}), **parse_chunks(chunks)},
        shards=parse_shards(shards),
        resume=resume,
        overwrite=overwrite,
        provenance=provenance(),
        allow_nonfinite=allow_nonfinite(),
        **kwargs,
    )


#: The ``--invalid-*`` rule of the job running now (set by :func:`mask_options`).
_rule: contextvars.ContextVar[InvalidRule | None] = contextvars.ContextVar(
    "cubepipe_invalid_rule", default=None
)


def mask_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--invalid-value V`` (repeatable), ``--invalid-below X``, ``--invalid-above X``
    for a job that computes on its input.

    The job itself does not take them: the rule is checked (a contradiction or NaN is one
    line, exit 2) before the job runs, and held while it runs, for :func:`open_in` (and
    :func:`apply_invalid`) to mask the pixels it names and for :func:`write_output` to
    record it in the history entry's params (the options are recorded as every option
    is). A pixel is invalid where any band matches (see :mod:`cubepipe.storage.invalid`).
    """

    @functools.wraps(fn)
    def job(state: Any, **params: Any) -> Any:
        from cubepipe.storage.invalid import invalid_rule  # noqa: PLC0415  (dask: on use)

        rule = invalid_rule(
            params.pop("invalid_value", ()) or (),
            params.pop("invalid_below", None),
            params.pop("invalid_above", None),
        )
        token = _rule.set(rule)
        try:
            return fn(state, **params)
        finally:
            _rule.reset(token)

    for option in (
        click.option(
            "--invalid-above",
            type=float,
            metavar="X",
            help="Mark a pixel invalid where any band is > X.",
        ),
        click.option(
            "--invalid-below",
            type=float,
            metavar="X",
            help="Mark a pixel invalid where any band is < X.",
        ),
        click.option(
            "--invalid-value",
            type=float,
            multiple=True,
            metavar="V",
            help="Mark a pixel invalid where any band equals V (repeatable; e.g. 0 for a "
            "black outside), in the output's mask. Not for NaN: NaN is invalid already "
            "(filter: with --mask-nan).",
        ),
    ):
        job = option(job)
    return job


def apply_invalid(
    ds: xr.Dataset, *, source: str = "the input", variable: str = "cube"
) -> xr.Dataset:
    """``ds`` with the running job's ``--invalid-*`` rule in its ``mask`` (unchanged outside
    a job with :func:`mask_options`, or without a rule).

    Reads the first chunk(s) of ``ds`` to make sure some pixel is still valid: a rule that
    masks every pixel is an :class:`~cubepipe.storage.errors.InputError`, before any work.
    """
    rule = _rule.get()
    if rule is None:
        return ds
    if variable not in ds:
        raise InputError(
            f"--invalid-* compare the values of variable {variable!r}, which {source} lacks "
            f"(it has {', '.join(map(str, ds.data_vars))})"
        )
    from cubepipe.storage.invalid import mask_invalid, require_valid  # noqa: PLC0415

    out = mask_invalid(ds, rule, variable=variable)
    require_valid(out, rule, source=source)
    return out


def invalid_params() -> dict[str, Any]:
    """``{"invalid": rule}`` for a history entry's params; empty without a rule."""
    rule = _rule.get()
    return {} if rule is None else {"invalid": rule.to_json()}
