"""``cubepipe demo``: the whole chain on a realistic cube, as a user would run it.

A synthetic signed-float cube (correlated bands, negative values, a NaN disc; 15 x 2500 x
2500 by default, the users' case) is written as a store, then the same steps a
``cubepipe run`` pipeline would take run on it: stats -> standardize -> compress (PCA) ->
reconstruct -> filter (masked Gaussian) -> export (exact float TIFF and a scaled PNG
preview) -> report. Each step is the real command, invoked through the pipeline runner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import click
import dask

from cubepipe.pipeline.cli.runner.pipeline import plan_pipeline, run_pipeline
from cubepipe.storage import describe, history, open_cube, read_attrs, write_cube

from ..backend import to_host
from ..scheduling import scheduler
from ..synthetic import SIZES, make_cube
from ._app import CliState, cli, pass_state
from ._format import human_bytes, render_info
from ._io import LocalPath


def demo_steps(out: Path) -> dict[str, Any]:
    """The demo chain as a pipeline document (what ``cubepipe run`` would read)."""
    d = str(out)
    return {
        "steps": [
            {"stats": {"in": f"{d}/demo.zarr"}},
            {"standardize": {"out": f"{d}/demo-z.zarr"}},
            {"compress": {"out": f"{d}/demo-pca.zarr", "components": 5}},
            {"reconstruct": {"out": f"{d}/demo-rec.zarr"}},
            {
                "filter": {
                    "in": f"{d}/demo-z.zarr",
                    "out": f"{d}/demo-smooth.zarr",
                    "kernel": "gaussian:2",
                    "mask_nan": True,
                }
            },
            {"export": {"out": f"{d}/demo-smooth.tif", "bands": [0, 7, 14]}},
            {
                "export": {
                    "in": f"{d}/demo-smooth.zarr",
                    "out": f"{d}/demo-preview.png",
                    "bands": [0, 7, 14],
                    "scale": "percentile:1,99",
                }
            },
            {
                "report": {
                    "in": f"{d}/demo-pca.zarr",
                    "out": f"{d}/demo-report.html",
                    "original": f"{d}/demo.zarr",
                }
            },
        ]
    }


@cli.command()
@click.option(
    "-o",
    "--output",
    default="demo-output",
    show_default=True,
    type=LocalPath(file_okay=False, path_type=Path),
    help="Directory the demo writes into (its earlier output there is replaced).",
)
@click.option(
    "--size",
    type=click.Choice(sorted(SIZES)),
    default="full",
    show_default=True,
    help="full = 15 bands x 2500 x 2500 (the users' case); small for a quick look.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic cube.")
@click.option("--store-only", is_flag=True, help="Only write and describe the cube store.")
@pass_state
def demo(state: CliState, output: Path, size: str, seed: int, store_only: bool) -> None:
    """Run the whole chain on a synthetic signed-float cube and print a summary."""
    output.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if state.scheduler_spec == "local":  # one cluster for every step of the chain
            client = stack.enter_context(
                scheduler(
                    "local",
                    workers=state.workers,
                    memory_limit=state.memory_limit,
                    quiet=state.quiet,
                )
            )
            state = dataclasses.replace(state, scheduler_spec=client.scheduler.address)
        _demo(state, output, size, seed, store_only)


def _demo(state: CliState, output: Path, size: str, seed: int, store_only: bool) -> None:
    store = output / "demo.zarr"
    bands, ny, nx = SIZES[size]
    state.say(f"cubepipe demo: generating a {bands} x {ny} x {nx} float32 cube -> {store}")
    t0 = time.perf_counter()
    with state.compute():
        write_cube(
            to_host(make_cube(size, seed=seed)),
            store,
            op="demo",
            params={"size": size, "seed": seed},
            device="cpu",  # the synthetic cube is made on the host
            overwrite=True,  # the demo's own output: always safe to replace
        )
    d = describe(store)
    click.echo(render_info(d))
    cube = open_cube(store)["cube"]
    neg, nan = (int(v) for v in dask.compute((cube < 0).sum(), cube.isnull().sum()))
    click.echo(
        f"\ndemo store: {human_bytes(d['bytes_in_memory'])} ({bands} bands x {ny} x {nx}, "
        f"{neg} negative values, {nan} NaN) in {store}; open it with: "
        f"xarray.open_zarr({str(store)!r})"
    )
    if store_only:
        return
    pipeline = plan_pipeline(demo_steps(output), cli, source="demo", overwrite=True)
    times = run_pipeline(pipeline, cli, state, say=state.say)
    res = history(read_attrs(output / "demo-pca.zarr"))[-1].get("results", {})
    steps = ", ".join(f"{s.op} {t:.1f} s" for s, t in zip(pipeline.steps, times, strict=True))
    click.echo(
        f"demo summary: {bands} x {ny} x {nx} cube -> 5 PCA components (RMSE "
        f"{res.get('rmse', float('nan')):.4g}, PSNR {res.get('psnr_db', float('nan')):.1f} dB) "
        f"in {time.perf_counter() - t0:.1f} s ({steps})"
    )
    click.echo(f"report: {output / 'demo-report.html'}")
