"""Writing a cube store: cubepipe's write_cube beside what a user would do instead.

Cases (each in its own process, same synthetic 15-band cube generated lazily):
- ``xarray_to_zarr``: ``ds.to_zarr(path)`` with the same codec (zstd level 1 + checksum),
  the naive xarray way (baseline);
- ``cubepipe_write``: ``write_cube`` (chunk-by-chunk, provenance, completion marker,
  consolidated metadata; the write lock and the +-inf check of every block);
- ``cubepipe_write_durable``: the same with ``durable=True`` (``--durable``): the file
  system is flushed (syncfs) before the completion marker, which is what surviving a
  power loss costs;
- ``numpy_in_memory``: compute the whole cube into memory and ``np.save`` it (what people
  do when the cube fits; shows the memory it costs).

Sizes: ``1x`` = 15 x 2500 x 2500 (357 MiB), ``4x`` = 15 x 5000 x 5000. Run:
``python benchmarks/bench_store.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import write_cube
from cubepipe.storage.store import default_compressors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import main

warnings.filterwarnings("ignore", message="Consolidated metadata")

SIZES = {"tiny": (15, 300, 300), "1x": (15, 2500, 2500), "4x": (15, 5000, 5000)}


def _cube(size: str):
    return make_cube(SIZES[size], seed=0)


def cubepipe_write(size: str, workdir: Path) -> dict[str, Any]:
    write_cube(_cube(size), workdir / "out.zarr", op="bench")
    return {}


def cubepipe_write_durable(size: str, workdir: Path) -> dict[str, Any]:
    write_cube(_cube(size), workdir / "out.zarr", op="bench", durable=True)
    return {}


def xarray_to_zarr(size: str, workdir: Path) -> dict[str, Any]:
    ds = _cube(size)
    enc = {"cube": {"compressors": default_compressors(), "chunks": ds["cube"].data.chunksize}}
    ds.to_zarr(workdir / "out.zarr", zarr_format=3, encoding=enc, consolidated=True)
    return {}


def numpy_in_memory(size: str, workdir: Path) -> dict[str, Any]:
    np.save(workdir / "out.npy", _cube(size)["cube"].values)
    return {}


if __name__ == "__main__":
    main(
        "bench_store",
        {
            "xarray_to_zarr": xarray_to_zarr,
            "cubepipe_write": cubepipe_write,
            "cubepipe_write_durable": cubepipe_write_durable,
            "numpy_in_memory": numpy_in_memory,
        },
        baseline="xarray_to_zarr",
        sizes=("1x", "4x"),
        quick_size="tiny",
        notes="Write a lazily generated synthetic cube (generation time is included in "
        "every case alike).",
    )
