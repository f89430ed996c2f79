"""``cubepipe stats``, ``standardize`` and ``destandardize``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from cubepipe.storage.errors import InputError
from cubepipe.storage.location import is_remote

from ._app import CliState, command
from ._format import human_bytes
from ._io import (
    apply_invalid,
    in_argument,
    invalid_params,
    json_option,
    mask_options,
    open_in,
    provenance,
    write_options,
    write_output,
)

# The library (dask, xarray, zarr) is imported when a job runs, not for `--help`; the
# choices the options offer are spelled out here for that (tests/test_startup.py checks
# them against the library's).
#: = :data:`cubepipe.pipeline.stats.standardize.METHODS`
METHODS = ("zscore", "minmax")
#: = :data:`cubepipe.storage.encodings.ENCODINGS`
ENCODINGS = ("float32", "float16", "int16-quantized")


def _stats_table(d: dict) -> str:
    has_wl = any("wavelength" in r for r in d["bands"])
    head = f"{'band':>6} " + (f"{'nm':>9} " if has_wl else "")
    head += f"{'count':>12} {'mean':>14} {'std':>14} {'min':>14} {'max':>14}"
    lines = [head]
    for r in d["bands"]:
        cells = [f"{r['band']!s:>6}"]
        if has_wl:
            cells.append(f"{r.get('wavelength', float('nan')):9.2f}")
        cells.append(f"{r['count']:12d}")
        cells += [
            f"{r[k]:14.6g}" if r[k] is not None else f"{'-':>14}"
            for k in ("mean", "std", "min", "max")
        ]
        lines.append(" ".join(cells))
    return "\n".join(lines)


@command("stats")
@click.argument("store", type=str)
@json_option
@click.option("--variable", default="cube", show_default=True, help="Variable to summarise.")
@click.option("--split-every", type=click.IntRange(min=2), help="Fan-in of the tree reduction.")
@click.option("--no-save", is_flag=True, help="Print the statistics without saving them.")
@mask_options
def stats_cmd(
    state: CliState, store: str, as_json: bool, variable: str, split_every: int, no_save: bool
) -> None:
    """Fit per-band count/mean/std/min/max in one pass and save them into STORE.

    The statistics are stored as float64 variables stats_* beside the data, so
    `standardize --stats STORE` can re-apply them to other data later. With
    --invalid-value/-below/-above they are over the pixels the rule leaves valid (the
    store's mask is not changed; the rule is recorded with the statistics).
    """
    from cubepipe.pipeline.stats.fit import STAT_VARS, fit_stats, stats_to_json  # noqa: PLC0415
    from cubepipe.pipeline.stats.standardize import METHOD_ATTR  # noqa: PLC0415
    from cubepipe.storage.store import open_cube  # noqa: PLC0415
    from cubepipe.storage.update import add_variables  # noqa: PLC0415

    if not no_save and is_remote(store):
        raise InputError(
            f"{store}: saving statistics into a store on object storage is not supported "
            "yet; use --no-save (with --json to keep them in a file)"
        )
    ds = apply_invalid(open_cube(store), source=store, variable=variable)
    if not no_save and METHOD_ATTR in ds.get(variable, ds).attrs:
        raise InputError(
            f"{store} holds standardized data whose stats_* are the statistics it was "
            "standardized with (destandardize needs them); use --no-save to only print"
        )
    t0 = time.perf_counter()
    with state.compute():
        st = fit_stats(
            ds, variable=variable, split_every=split_every, device=state.device
        ).compute()
    if not no_save:
        add_variables(
            store,
            st,
            op="stats",
            params={"variable": variable, **invalid_params()},
            device=str(state.device),
            provenance=provenance(),
        )
    d = stats_to_json(st)
    click.echo(json.dumps(d, indent=2) if as_json else _stats_table(d))
    saved = "" if no_save else f"; saved {', '.join(STAT_VARS)}"
    state.say(f"cubepipe stats: {store} in {time.perf_counter() - t0:.1f} s{saved}")


def _load_stats(spec: str):
    from cubepipe.pipeline.stats.fit import stats_from_json, take_stats  # noqa: PLC0415
    from cubepipe.storage.store import open_cube  # noqa: PLC0415

    if Path(spec).is_file():
        return stats_from_json(spec)
    return take_stats(open_cube(spec))


#: ``standardize`` names the lossy encodings in a note when its float32 output would be at
#: least this many times its input file and this large: a compressed video or JPEG.
_NOTE_RATIO, _NOTE_MIN_BYTES = 20, 64 * 2**20


def _size_note(source: str, out_bytes: int) -> str | None:
    path = Path(source)
    if is_remote(source) or not path.is_file():
        return None
    in_bytes = path.stat().st_size
    if out_bytes < max(_NOTE_MIN_BYTES, _NOTE_RATIO * in_bytes):
        return None
    return (
        f"cubepipe standardize: note: the float32 output holds {human_bytes(out_bytes)} "
        f"(before compression) for a {human_bytes(in_bytes)} input; --encoding float16 "
        "or int16-quantized stores half the bytes and records its max error"
    )


def _keep_note(source: str, spec: str) -> str | None:
    """The line saying what ``standardize`` keeps between its two reads of a local store
    (the budget of :func:`~cubepipe.pipeline.scheduling.keep_between_passes`)."""
    from ..scheduling import keep_between_passes  # noqa: PLC0415

    if is_remote(source) or not Path(source).is_dir():
        return None
    keep = keep_between_passes(spec, source)
    if keep <= 0:
        return None
    return (
        f"cubepipe standardize: fitting, then applying; keeping up to {human_bytes(keep)} "
        "of decoded chunks between the two reads (min(available memory / 8, threads x "
        "(128 MiB - 4 chunks)))"
    )


@command("standardize")
@in_argument
@write_options
@click.option("--method", type=click.Choice(METHODS), default="zscore", show_default=True)
@click.option(
    "--stats",
    "stats_from",
    help="Use statistics from this store (stats_* variables) or JSON (`cubepipe stats --json`).",
)
@click.option(
    "--encoding",
    type=click.Choice(ENCODINGS),
    default="float32",
    show_default=True,
    help="float32 is lossless; float16 and int16-quantized (lossy, half the bytes) record "
    "their max error in the output's attrs.",
)
@mask_options
def standardize_cmd(
    state: CliState,
    source: str,
    output: Path,
    resume: bool,
    overwrite: bool,
    chunks: str | None,
    shards: str | None,
    method: str,
    stats_from: str | None,
    encoding: str,
) -> None:
    """Standardize IN per band (zscore: mean 0, std 1; minmax: [0, 1]) into OUT (float32,
    or the lossy --encoding asked for).

    Without --stats, statistics saved in IN are used if present, else fitted first (one
    extra read of IN; on the threaded scheduler up to min(available memory / 8, threads x
    (128 MiB - 4 chunks)) of decoded chunks of a local store are kept from the first read
    for the second, said in a line). OUT carries the statistics, so `destandardize`
    inverts it. --invalid-value/-below/-above mask pixels (any band matching) in OUT's
    mask and fit the statistics over the rest (saved ones are then not used; --stats
    still is).
    """
    from cubepipe.pipeline.stats.fit import STAT_VARS, take_stats  # noqa: PLC0415
    from cubepipe.pipeline.stats.standardize import standardize  # noqa: PLC0415
    from cubepipe.storage.encodings import encode  # noqa: PLC0415

    from ..backend import to_host  # noqa: PLC0415

    ds = open_in(source)
    t0 = time.perf_counter()
    with state.compute():
        if stats_from:
            st = _load_stats(stats_from)
        elif all(v in ds for v in STAT_VARS) and not invalid_params():
            st = take_stats(ds)
            state.say(f"cubepipe standardize: using the statistics saved in {source}")
        else:
            st = None  # fitted first: the input is read twice
            ds = open_in(source, two_pass_on=state.scheduler_spec)
            if note := _keep_note(source, state.scheduler_spec):
                state.say(note)
        out = standardize(ds, st, method=method, device=state.device)
        if encoding != "float32":  # float16 and int16-quantized scan OUT once first
            out = encode(to_host(out), encoding)
        elif note := _size_note(source, out["cube"].nbytes):
            state.say(note)
        write_output(
            state,
            out,
            output,
            op="standardize",
            params={
                "method": method,
                "stats": stats_from or ("saved" if st is not None else "fit"),
                **({"encoding": encoding} if encoding != "float32" else {}),
            },
            inputs=[source] + ([stats_from] if stats_from else []),
            chunks=chunks,
            shards=shards,
            resume=resume,
            overwrite=overwrite,
        )
    state.say(f"cubepipe standardize: wrote {output} in {time.perf_counter() - t0:.1f} s")


@command("destandardize")
@in_argument
@write_options
def destandardize_cmd(
    state: CliState,
    source: str,
    output: Path,
    resume: bool,
    overwrite: bool,
    chunks: str | None,
    shards: str | None,
) -> None:
    """Invert `standardize`: IN must be a store it wrote (it carries the statistics)."""
    from cubepipe.pipeline.stats.standardize import destandardize  # noqa: PLC0415
    from cubepipe.storage.store import open_cube, store_state  # noqa: PLC0415

    if store_state(source) == "missing":
        open_cube(source)  # raises the one-line not-found error
    ds = open_cube(source)
    with state.compute():
        write_output(
            state,
            destandardize(ds, device=state.device),
            output,
            op="destandardize",
            inputs=[source],
            chunks=chunks,
            shards=shards,
            resume=resume,
            overwrite=overwrite,
        )
    state.say(f"cubepipe destandardize: wrote {output}")
