"""Fit-and-apply standardization of a stored cube, beside what a user would do instead.

Cases (each in its own process, reading the same input store):
- ``copy_floor``: plain dask zarr-to-zarr copy, same codec (one read, one write): baseline;
- ``io_floor_2read``: read the cube once, then copy it (two reads, one write): the least
  any fit-then-apply method without caching can do;
- ``naive_xarray``: ``(x - x.mean(("y","x"))) / x.std(("y","x"))`` then ``to_zarr``;
- ``cubepipe``: ``standardize(open_cube(...))`` then ``write_cube`` (fit pass + apply
  pass, float64 Chan statistics, provenance, completion marker), with the kept-chunk
  budget ``cubepipe standardize`` uses (``keep_between_passes``; ``keep_mb``, and
  ``kept_pct``: the share of the second read it covers; ``fit_s``: the fitting pass);
- ``floor``: the codecs alone (``_common.floor_case``): decode every input chunk once and
  encode the output's bytes, on every core: what a copy costs at least; ``floor_2read``:
  the same with two reads, what fit-then-apply costs at least without kept chunks.
  Every row's ``x_floor`` is its seconds over ``floor``'s.

Sizes: ``1x`` = 15 x 2500 x 2500 float32 (357 MiB), ``4x`` = 15 x 5000 x 5000 (1.4 GiB),
``16x`` = 15 x 10000 x 10000 (5.6 GiB; its input is built once, ~4.5 GB on disk).
Run ``python benchmarks/bench_standardize.py`` (``--quick`` for a smoke run; ``--size 1x
--size 4x --size 16x --repeat 3`` for the committed table). The goal rows (issue 19) are
printed at the end.
"""

from __future__ import annotations

import math
import sys
import time
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
from _common import INPUTS, floor_case, main, zarr_copy

warnings.filterwarnings("ignore", message="Consolidated metadata")

SIZES = {
    "tiny": (15, 300, 300),
    "1x": (15, 2500, 2500),
    "4x": (15, 5000, 5000),
    "16x": (15, 10000, 10000),
}


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
        keep = keep_between_passes("threads", source)
        ds = open_cube(source, keep_bytes=keep)
        t0 = time.perf_counter()
        out = standardize(ds)  # the fitting pass runs here
        fit_s = time.perf_counter() - t0
        write_cube(out, workdir / "z.zarr", op="standardize")
    chunk = 4 * math.prod(ds["cube"].data.chunksize)
    share = min(1.0, (keep // chunk) / ds["cube"].data.npartitions)
    return {
        "keep_mb": round(keep / 2**20),
        "kept_pct": round(100 * share),
        "fit_s": round(fit_s, 3),
    }


def _out_bytes(size: str) -> int:
    return 4 * math.prod(SIZES[size])


floor = floor_case(lambda size: [_input(size) / "cube"], _out_bytes)
floor_2read = floor_case(lambda size: [_input(size) / "cube"], _out_bytes, reads=2)


def summary(rows: list[dict[str, Any]]) -> str:
    """The goal rows of issue 19 (items 3 and 4), from this run's medians."""
    by = {(r["size"], r["case"]): r for r in rows}
    lines = [
        "Goals (issue 19): cubepipe <= 1.3x copy_floor; naive_xarray / cubepipe >= 1.5 "
        "(wall time, same run); peak RSS < 600 MB and flat across sizes.",
        "",
        "| size | cubepipe / copy_floor | naive_xarray / cubepipe | cubepipe x_floor | "
        "floor_2read x_floor | cubepipe cpu_s / copy_floor cpu_s | peak RSS MB | kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rss = []
    for size in dict.fromkeys(r["size"] for r in rows):
        cp, copy = by.get((size, "cubepipe")), by.get((size, "copy_floor"))
        if cp is None or copy is None:
            continue
        naive, f2 = by.get((size, "naive_xarray")), by.get((size, "floor_2read"))
        ratio = cp["seconds"] / copy["seconds"]
        lead = naive["seconds"] / cp["seconds"] if naive else float("nan")
        rss.append(cp["peak_rss_mb"])
        lines.append(
            f"| {size} | {ratio:.3f} ({'met' if ratio <= 1.3 else 'not met'}) | "
            f"{lead:.3f} ({'met' if lead >= 1.5 else 'not met'}) | {cp.get('x_floor', '')} | "
            f"{f2.get('x_floor', '') if f2 else ''} | "
            f"{cp['cpu_s'] / copy['cpu_s']:.2f} | {cp['peak_rss_mb']:.0f} | "
            f"{cp.get('keep_mb', '')} MiB, {cp.get('kept_pct', '')}% of the 2nd read |"
        )
    if rss:
        lines += [
            "",
            f"cubepipe peak RSS {min(rss):.0f}-{max(rss):.0f} MB across sizes "
            f"({'met' if max(rss) < 600 else 'not met'}: < 600 MB).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main(
        "bench_standardize",
        {
            "copy_floor": copy_floor,
            "io_floor_2read": io_floor_2read,
            "cubepipe_copy": cubepipe_copy,
            "naive_xarray": naive_xarray,
            "cubepipe": cubepipe,
            "floor": floor,
            "floor_2read": floor_2read,
        },
        baseline="copy_floor",
        floor="floor",
        sizes=("1x", "4x", "16x"),
        quick_size="tiny",
        prepare=prepare,
        columns=("keep_mb", "kept_pct", "fit_s"),
        summary=summary,
        notes="Input: synthetic signed-float cube (a disc of NaN pixels) in a store of "
        "cubepipe's default codecs, chunks 15 x 512 x 512. Goal (issues 4 and 19): cubepipe "
        "at most 1.3x copy_floor at every size, peak RSS under 600 MB and flat, and at least "
        "1.5x faster than naive_xarray.",
    )
