"""``cubepipe demo``: make a realistic cube, store it, describe it."""

from __future__ import annotations

import time
from pathlib import Path

import click
import dask

from cubepipe.storage import describe, open_cube, write_cube

from ..backend import to_host
from ..synthetic import SIZES, make_cube
from ._app import CliState, cli, pass_state
from ._format import human_bytes, render_info


@cli.command()
@click.option(
    "-o",
    "--output",
    default="demo-output",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory the demo writes into.",
)
@click.option(
    "--size",
    type=click.Choice(sorted(SIZES)),
    default="full",
    show_default=True,
    help="full = 15 bands x 2500 x 2500 (the users' case); small for a quick look.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic cube.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo's output.")
@click.option("--resume", is_flag=True, help="Finish an interrupted demo run.")
@pass_state
def demo(
    state: CliState, output: Path, size: str, seed: int, overwrite: bool, resume: bool
) -> None:
    """Run the demo chain on a synthetic signed-float cube (correlated bands, negative
    values, a NaN region) and print a summary.

    For now the chain is: generate -> write a cube store -> describe it.
    """
    output.mkdir(parents=True, exist_ok=True)
    store = output / "demo.zarr"
    if store.exists() and not (overwrite or resume):
        overwrite = True  # the demo's own output: always safe to replace
    bands, ny, nx = SIZES[size]
    state.say(f"cubepipe demo: generating a {bands} x {ny} x {nx} float32 cube -> {store}")
    with state.compute():
        t0 = time.perf_counter()
        ds = make_cube(size, seed=seed)
        write_cube(
            to_host(ds),
            store,
            op="demo",
            params={"size": size, "seed": seed},
            device=str(state.device),
            overwrite=overwrite,
            resume=resume,
        )
        elapsed = time.perf_counter() - t0
    d = describe(store)
    click.echo(render_info(d))
    cube = open_cube(store)["cube"]
    neg, nan = (int(v) for v in dask.compute((cube < 0).sum(), cube.isnull().sum()))
    click.echo(
        f"\ndemo summary: wrote {human_bytes(d['bytes_in_memory'])} ({bands} bands x {ny} x {nx},"
        f" {neg} negative values, {nan} NaN) to {store} in {elapsed:.1f} s; "
        f"open it with: xarray.open_zarr({str(store)!r})"
    )
