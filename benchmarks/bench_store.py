"""Writing a cube store: cubepipe's write_cube beside what a user would do instead.

Cases (each in its own process, same synthetic 15-band cube generated lazily):
- ``xarray_to_zarr``: ``ds.to_zarr(path)`` with the same codec (zstd level 1 + checksum),
  the naive xarray way (baseline);
- ``cubepipe_write``: ``write_cube`` (chunk-by-chunk, provenance, completion marker,
  consolidated metadata; the write lock and the +-inf check of every block);
- ``cubepipe_write_durable``: the same with ``durable=True`` (``--durable``): the file
  system is flushed (syncfs) before the completion marker, which is what surviving a
  power loss costs;
- ``cubepipe_write_sharded``: ``write_cube(..., shards={"y": 2048, "x": 2048})``
  (``--shards y=2048,x=2048``): zarr v3 sharding, 16 chunks of 512 x 512 per file, one
  dask task per shard;
- ``numpy_in_memory``: compute the whole cube into memory and ``np.save`` it (what people
  do when the cube fits; shows the memory it costs).

- ``cubepipe_read`` / ``cubepipe_read_sharded``: read an unsharded / sharded store of the
  same cube whole (``open_cube(...).sum()``: cubepipe's direct chunk reads, zarr-python's
  sharding codec), stores written once by ``prepare``, untimed.

The zarr cases report ``files``: files in the store, what an HPC file system or an object
store has to handle.

Sizes: ``1x`` = 15 x 2500 x 2500 (357 MiB), ``4x`` = 15 x 5000 x 5000. Run:
``python benchmarks/bench_store.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import open_cube, store_state, write_cube
from cubepipe.storage.store import default_compressors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import INPUTS, main

warnings.filterwarnings("ignore", message="Consolidated metadata")

SIZES = {"tiny": (15, 300, 300), "1x": (15, 2500, 2500), "4x": (15, 5000, 5000)}
#: 4 x 4 chunks of 512 x 512 per shard file (251 MiB of float32 at 15 bands).
SHARDS = {"y": 2048, "x": 2048}


def _cube(size: str):
    return make_cube(SIZES[size], seed=0)


def _files(path: Path) -> dict[str, Any]:
    """Files in the store (counting takes milliseconds; inside the timed case)."""
    return {"files": sum(len(f) for _, _, f in os.walk(path))}


def cubepipe_write(size: str, workdir: Path) -> dict[str, Any]:
    write_cube(_cube(size), workdir / "out.zarr", op="bench")
    return _files(workdir / "out.zarr")


def cubepipe_write_sharded(size: str, workdir: Path) -> dict[str, Any]:
    write_cube(_cube(size), workdir / "out.zarr", op="bench", shards=SHARDS)
    return _files(workdir / "out.zarr")


def _stored(size: str, sharded: bool) -> Path:
    return INPUTS / f"store-{size}{'-sharded' if sharded else ''}.zarr"


def prepare(size: str) -> None:
    """The stores the read cases read, written once (untimed)."""
    for sharded in (False, True):
        if store_state(_stored(size, sharded)) != "complete":
            INPUTS.mkdir(parents=True, exist_ok=True)
            write_cube(
                _cube(size),
                _stored(size, sharded),
                op="bench-input",
                overwrite=True,
                shards=SHARDS if sharded else None,
            )


def cubepipe_read(size: str, workdir: Path) -> dict[str, Any]:
    """Read the unsharded store whole (cubepipe's direct chunk reads)."""
    open_cube(_stored(size, False))["cube"].data.sum().compute()
    return _files(_stored(size, False))


def cubepipe_read_sharded(size: str, workdir: Path) -> dict[str, Any]:
    """Read the sharded store whole (zarr-python's sharding codec)."""
    open_cube(_stored(size, True))["cube"].data.sum().compute()
    return _files(_stored(size, True))


def cubepipe_write_durable(size: str, workdir: Path) -> dict[str, Any]:
    write_cube(_cube(size), workdir / "out.zarr", op="bench", durable=True)
    return _files(workdir / "out.zarr")


def xarray_to_zarr(size: str, workdir: Path) -> dict[str, Any]:
    ds = _cube(size)
    enc = {"cube": {"compressors": default_compressors(), "chunks": ds["cube"].data.chunksize}}
    ds.to_zarr(workdir / "out.zarr", zarr_format=3, encoding=enc, consolidated=True)
    return _files(workdir / "out.zarr")


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
            "cubepipe_write_sharded": cubepipe_write_sharded,
            "numpy_in_memory": numpy_in_memory,
            "cubepipe_read": cubepipe_read,
            "cubepipe_read_sharded": cubepipe_read_sharded,
        },
        baseline="xarray_to_zarr",
        sizes=("1x", "4x"),
        quick_size="tiny",
        prepare=prepare,
        columns=("files",),
        notes="Write a lazily generated synthetic cube (generation time is included in "
        "every case alike).",
    )
