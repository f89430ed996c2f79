"""``cubepipe report STORE -o report.html``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ._app import CliState, command
from ._io import LocalPath


@command("report")
@click.argument("store", type=str)
@click.option(
    "-o",
    "--output",
    required=True,
    type=LocalPath(dir_okay=False, path_type=Path, remote_ok=True),
    help="The HTML file to write (one self-contained page).",
)
@click.option(
    "--original",
    metavar="IN",
    help="The data STORE was compressed/reconstructed from (raw, or the standardized store "
    "compress read): adds the RMSE and the error map, in the units the model was fitted in "
    "(and in raw units when standardization statistics are there).",
)
@click.option(
    "--variable",
    help="Variable to show (default: cube, else scores, else the one (..., band, y, x) variable).",
)
@click.option(
    "--bins", type=click.IntRange(2, 4096), default=64, show_default=True, help="Histogram bins."
)
@click.option(
    "--size",
    type=click.IntRange(16, 4096),
    default=256,
    show_default=True,
    help="Longest side of quick-looks in pixels (the data are strided to it).",
)
@click.option(
    "--max-bands",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Quick-looks and histograms of at most this many bands, spread evenly.",
)
@click.option("--title", help="Page title (default: the store's name).")
@click.option("--overwrite", is_flag=True, help="Replace the output file if it exists.")
@click.option("--allow-incomplete", is_flag=True, help="Read a store whose writer did not finish.")
def report_cmd(
    state: CliState,
    store: str,
    output: Path,
    original: str | None,
    variable: str | None,
    bins: int,
    size: int,
    max_bands: int,
    title: str | None,
    overwrite: bool,
    allow_incomplete: bool,
) -> None:
    """Write one self-contained HTML page about STORE.

    Band quick-looks (diverging colours centred at 0; first image/frame) and histograms,
    the per-band statistics, and for a `compress` output the scree plot, component images
    and (with --original) the reconstruction error (RMSE over every valid value and a
    map), against the input the model was fitted on; then the provenance history and
    layout. Images are embedded; the page loads nothing else. The data are read chunk by
    chunk, at most twice.
    """
    # matplotlib is imported here, not at start-up: every other command starts faster.
    from cubepipe.pipeline.report.write import write_report  # noqa: PLC0415

    t0 = time.perf_counter()
    with state.compute():
        out = write_report(
            store,
            output,
            overwrite=overwrite,
            original=original,
            variable=variable,
            bins=bins,
            size=size,
            max_bands=max_bands,
            title=title,
            allow_incomplete=allow_incomplete,
        )
    kib = "" if isinstance(out, str) else f" ({out.stat().st_size / 1024:.0f} KiB)"
    click.echo(f"report: {store} -> {out}{kib}")
    state.say(f"cubepipe report: wrote {out} in {time.perf_counter() - t0:.1f} s")
