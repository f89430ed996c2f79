"""Fit-and-apply standardization of a stored cube, beside what a user would do instead.

Cases (each in its own process, reading the same input store):
- ``copy_floor``: plain dask zarr-to-zarr copy, same codec (one read, one write): baseline;
- ``io_floor_2read``: read the cube once, then copy it (two reads, one write): the least
  any fit-then-apply method without caching can do;
- ``naive_xarray``: ``(x - x.mean(("y","x"))) / x.std(("y","x"))`` then ``to_zarr``;
- ``cubepipe``: ``standardize(open_cube(...))`` then ``write_cube`` (fit pass + apply
  pass, float64 Chan statistics, provenance, completion marker).

Sizes: ``1x`` = 15 x 2500 x 2500 float32 (357 MiB), ``4x`` = 15 x 5000 x 5000.
Run ``python benchmarks/bench_standardize.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import xarray as xr

from cubepipe.pipeline.scheduling import keep_between_passes, scheduler
from cubepipe.pipeline.stats.standardize import standardize
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import open_cube, store_state, write_cube
from cubepipe.storage.store import default_compressors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import INPUTS, main, zarr_copy

warnings.filterwarnings("ignore", message="Consolidated metadata")

SIZES = {"tiny": (15, 300, 300), "1x": (15, 2500, 2500), "4x": (15, 5000, 5000)}


def _input(size: str) -> Path:
    return INPUTS / f"standardize-{size}.zarr"


def prepare(size: str) -> None:
    if store_state(_input(size)) != "complete":
        INPUTS.mkdir(parents=True, exist_ok=True)
        write_cube(make_cube(SIZES[size], seed=0), _input(size), op="bench-input", overwrite=True)


def copy_floor(size: str, workdir: Path) -> dict[str, Any]:
    zarr_copy(da.from_zarr(str(_input(size) / "cube")), workdir / "copy.zarr")
    return {}


def cubepipe_copy(size: str, workdir: Path) -> dict[str, Any]:
    """cubepipe's own copy, ``write_cube(open_cube(IN), OUT)``: its direct chunk I/O
    (storage/chunkio.py), with no computation. Not a goal; shows how much of cubepipe's
    lead over the zarr floors is I/O."""
    write_cube(open_cube(_input(size)), workdir / "copy.zarr", op="copy")
    return {}


def io_floor_2read(size: str, workdir: Path) -> dict[str, Any]:
    arr = da.from_zarr(str(_input(size) / "cube"))
    arr.sum().compute()
    zarr_copy(arr, workdir / "copy.zarr")
    return {}


def naive_xarray(size: str, workdir: Path) -> dict[str, Any]:
    x = xr.open_zarr(str(_input(size)), chunks={})["cube"]
    z = (x - x.mean(("y", "x"))) / x.std(("y", "x"))
    enc = {"cube": {"compressors": default_compressors(), "chunks": x.data.chunksize}}
    z.to_dataset(name="cube").to_zarr(str(workdir / "naive.zarr"), zarr_format=3, encoding=enc)
    return {}


def cubepipe(size: str, workdir: Path) -> dict[str, Any]:
    """What ``cubepipe standardize IN -o OUT`` runs (fit, then apply; pipeline/cli/stats.py)."""
    source = _input(size)
    with scheduler("threads"):
        ds = open_cube(source, keep_bytes=keep_between_passes("threads", source))
        write_cube(standardize(ds), workdir / "z.zarr", op="standardize")
    return {}


if __name__ == "__main__":
    main(
        "bench_standardize",
        {
            "copy_floor": copy_floor,
            "io_floor_2read": io_floor_2read,
            "cubepipe_copy": cubepipe_copy,
            "naive_xarray": naive_xarray,
            "cubepipe": cubepipe,
        },
        baseline="copy_floor",
        sizes=("1x", "4x"),
        quick_size="tiny",
        prepare=prepare,
        notes="Input: synthetic signed-float cube in a zstd(level 1, checksum) store, chunks "
        "15 x 512 x 512. Goal (issue 4): cubepipe at most 1.3x copy_floor, peak RSS under "
        "600 MB and flat from 1x to 4x.",
    )
