"""Ingest and export of a float cube beside the floor: what a user would write by hand.

Every case moves the same bytes (one synthetic float32 cube, NaN disc included) between
a file and a zarr v3 store with the same codec (cubepipe's default codec chain, chunks
15 x 512 x 512), each in its own process:

- ``floor_npy_to_zarr``: ``z[...] = np.load(npy, mmap_mode="r")`` into a plain zarr array
  ``z`` (baseline);
- ``cubepipe_ingest_npy``: ``ingest(npy, out)``;
- ``floor_tiff_to_zarr``: ``z[...] = tifffile.memmap(tif)`` (the pages are raw and
  contiguous), the same plain zarr copy;
- ``cubepipe_ingest_tiff``: ``ingest(tif, out)``;
- ``floor_zarr_to_npy``: ``da.from_zarr(store/cube)`` -> ``da.store`` into
  ``np.lib.format.open_memmap``;
- ``cubepipe_export_npy``: ``export(store, out.npy)``;
- ``floor_zarr_to_tiff``: ``da.from_zarr(store/cube)`` -> ``da.store`` into
  ``tifffile.memmap(out.tif, shape, float32, photometric="minisblack")``;
- ``cubepipe_export_tiff``: ``export(store, out.tif)``.

Codec floors (issue 19; ``_common.floor_case``, one thread per core, results discarded):
``codec_floor_encode`` encodes the cube's bytes with cubepipe's default codec (all an
ingest must do besides reading raw pages); ``codec_floor_decode`` reads and decodes every
chunk of the store once (all an export must do besides writing raw pages). ``x_floor`` is
each ingest row (``*_to_zarr``, ``cubepipe_ingest_*``) over the first, each export row
over the second.

The harness reports every case against ``floor_npy_to_zarr``; after a full run this
script also appends a "paired ratios" table to ``results/bench_io.md`` (each cubepipe case
against its own floor, and peak RSS at 4x over 1x). Issue 3's goal: each cubepipe case
within 1.3x of its floor, peak RSS flat (4x input -> at most 1.2x memory).

The inputs (a ``.npy``, a float TIFF with one page per band and a cubepipe store, all
holding the same values) are made once per size by :func:`prepare`, streamed chunk by
chunk, and cached under ``_common.INPUTS``. Sizes: ``1x`` = 15 x 2500 x 2500 float32
(357 MiB), ``4x`` = 15 x 5000 x 5000 (1.4 GiB). Run ``python benchmarks/bench_io.py``
(both sizes in one run, so that the 4x/1x memory ratios can be computed; ``--quick`` for
a smoke run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr

from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import store_state, write_cube
from cubepipe.storage.export import export
from cubepipe.storage.ingest import ingest
from cubepipe.storage.store import default_compressors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import INPUTS, RESULTS, cube_bytes, floor_case, main

warnings.filterwarnings("ignore", message="Consolidated metadata")

NAME = "bench_io"
SIZES = {"tiny": (15, 300, 300), "1x": (15, 2500, 2500), "4x": (15, 5000, 5000)}
CHUNKS = (15, 512, 512)  # cubepipe's default store chunks for these cubes
BASELINE = "floor_npy_to_zarr"
#: cubepipe case -> the floor it is judged against.
PAIRS = {
    "cubepipe_ingest_npy": "floor_npy_to_zarr",
    "cubepipe_ingest_tiff": "floor_tiff_to_zarr",
    "cubepipe_export_npy": "floor_zarr_to_npy",
    "cubepipe_export_tiff": "floor_zarr_to_tiff",
}
TIME_GOAL = 1.3  # cubepipe seconds / floor seconds
RSS_GOAL = 1.2  # peak RSS at 4x / peak RSS at 1x


# -- inputs (made once per size, outside every timed case) --------------------------------


def _store(size: str) -> Path:
    return INPUTS / f"io-{size}.zarr"


def _npy(size: str) -> Path:
    return INPUTS / f"io-{size}.npy"


def _tif(size: str) -> Path:
    return INPUTS / f"io-{size}.tif"


def _check_same(path: Path, arr: np.ndarray, ref: zarr.Array) -> None:
    """Spot-check a freshly written input against the store (a corner and a NaN-disc row)."""
    _, ny, nx = ref.shape
    for sel in (np.s_[:, :64, :64], np.s_[:, int(0.7 * ny), :]):
        if not np.array_equal(np.asarray(arr[sel]), ref[sel], equal_nan=True):
            raise SystemExit(f"{path}: input differs from {ref.store}; delete it and rerun")


def prepare(size: str) -> None:
    """Make the inputs of ``size`` (see :func:`make_inputs`) in a separate process.

    Not in this one: the harness reads each case's peak RSS from ``wait4``, and Linux
    carries the spawning process's high-water mark into a child's ``ru_maxrss`` (the
    pre-exec memory of a vfork child is the parent's), so a parent that grew while
    writing the inputs would raise every case's reported peak to its own.
    """
    subprocess.run([sys.executable, __file__, "--make-inputs", size], check=True)


def make_inputs(size: str) -> None:
    """Write the store, then the ``.npy`` and the TIFF of the same values (if missing).

    Each file is written under a temporary name and renamed when complete, so a file that
    exists is whole.
    """
    INPUTS.mkdir(parents=True, exist_ok=True)
    store = _store(size)
    if store_state(store) != "complete":
        write_cube(make_cube(SIZES[size], seed=0), store, op="bench-input", overwrite=True)
    src = zarr.open_array(str(store / "cube"), mode="r")
    npy = _npy(size)
    if not npy.exists():
        tmp = npy.with_name(npy.name + ".partial")
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=src.shape)
        da.store(da.from_zarr(src), mm, lock=False)  # chunk by chunk, never the whole cube
        mm.flush()
        del mm
        _check_same(tmp, np.load(tmp, mmap_mode="r"), src)
        os.replace(tmp, npy)
    tif = _tif(size)
    if not tif.exists():
        tmp = tif.with_name(tif.stem + ".partial.tif")
        export(store, tmp, overwrite=True)  # float32, one page per band, streamed
        _check_same(tmp, tifffile.memmap(tmp, mode="r"), src)
        os.replace(tmp, tif)


# -- floors -------------------------------------------------------------------------------


def _zarr_copy(src: np.ndarray, out: Path) -> None:
    """What a user writes by hand: a plain zarr v3 array with cubepipe's codec and chunks,
    filled from a memory-mapped file (zarr reads and encodes it chunk by chunk).

    Not ``da.store(da.from_array(memmap))``: ``dask.array.from_array`` copies any array
    that has a ``.copy`` method (a memmap included) into memory, whole, and hashes it
    before computing, so it is slower than this and holds the cube in RAM.
    """
    z = zarr.create_array(
        str(out),
        shape=src.shape,
        chunks=tuple(min(c, n) for c, n in zip(CHUNKS, src.shape, strict=True)),
        dtype=src.dtype,
        compressors=default_compressors(),
    )
    z[...] = src


def floor_npy_to_zarr(size: str, workdir: Path) -> dict[str, Any]:
    _zarr_copy(np.load(_npy(size), mmap_mode="r"), workdir / "copy.zarr")
    return {}


def floor_tiff_to_zarr(size: str, workdir: Path) -> dict[str, Any]:
    # (band, y, x): one raw, contiguous page per band, so tifffile can memory-map it
    _zarr_copy(tifffile.memmap(_tif(size), mode="r"), workdir / "copy.zarr")
    return {}


def floor_zarr_to_npy(size: str, workdir: Path) -> dict[str, Any]:
    arr = da.from_zarr(str(_store(size) / "cube"))
    mm = np.lib.format.open_memmap(workdir / "out.npy", mode="w+", dtype=arr.dtype, shape=arr.shape)
    da.store(arr, mm, lock=False)
    mm.flush()
    return {}


def floor_zarr_to_tiff(size: str, workdir: Path) -> dict[str, Any]:
    arr = da.from_zarr(str(_store(size) / "cube"))
    mm = tifffile.memmap(
        workdir / "out.tif", shape=arr.shape, dtype=arr.dtype, photometric="minisblack"
    )
    da.store(arr, mm, lock=False)
    mm.flush()
    return {}


# -- cubepipe -----------------------------------------------------------------------------


def cubepipe_ingest_npy(size: str, workdir: Path) -> dict[str, Any]:
    ingest(_npy(size), workdir / "out.zarr")
    return {"floor": PAIRS["cubepipe_ingest_npy"]}


def cubepipe_ingest_tiff(size: str, workdir: Path) -> dict[str, Any]:
    ingest(_tif(size), workdir / "out.zarr")
    return {"floor": PAIRS["cubepipe_ingest_tiff"]}


def cubepipe_export_npy(size: str, workdir: Path) -> dict[str, Any]:
    export(_store(size), workdir / "out.npy")
    return {"floor": PAIRS["cubepipe_export_npy"]}


def cubepipe_export_tiff(size: str, workdir: Path) -> dict[str, Any]:
    export(_store(size), workdir / "out.tif")
    return {"floor": PAIRS["cubepipe_export_tiff"]}


def _cube_bytes(size: str) -> int:
    return cube_bytes(_store(size))


CASES = {
    "codec_floor_encode": floor_case(lambda size: [_store(size)], _cube_bytes, reads=0),
    "codec_floor_decode": floor_case(lambda size: [_store(size)], lambda size: 0),
    "floor_npy_to_zarr": floor_npy_to_zarr,
    "cubepipe_ingest_npy": cubepipe_ingest_npy,
    "floor_tiff_to_zarr": floor_tiff_to_zarr,
    "cubepipe_ingest_tiff": cubepipe_ingest_tiff,
    "floor_zarr_to_npy": floor_zarr_to_npy,
    "cubepipe_export_npy": cubepipe_export_npy,
    "floor_zarr_to_tiff": floor_zarr_to_tiff,
    "cubepipe_export_tiff": cubepipe_export_tiff,
}

#: Each case's codec floor (``x_floor``).
CODEC_FLOORS = {
    **dict.fromkeys(
        ["floor_npy_to_zarr", "floor_tiff_to_zarr", "cubepipe_ingest_npy", "cubepipe_ingest_tiff"],
        "codec_floor_encode",
    ),
    **dict.fromkeys(
        ["floor_zarr_to_npy", "floor_zarr_to_tiff", "cubepipe_export_npy", "cubepipe_export_tiff"],
        "codec_floor_decode",
    ),
}

NOTES = (
    "Same values in every case: a synthetic signed float32 cube (NaN disc) as .npy, as a "
    "float TIFF (one raw page per band, written by cubepipe export) and as a cubepipe store "
    "(cubepipe's default codec chain, chunks 15 x 512 x 512). Ingest floors fill a plain zarr v3 "
    "array with that codec from a memmap (`z[...] = np.load(npy, mmap_mode='r')`, "
    "`tifffile.memmap`); export floors `da.store` the store's array into a memmapped "
    ".npy/.tif. Inputs are read from the page cache (made just before). Peak RSS counts "
    "the file pages a process has mapped: the floors map the whole file once, so their "
    "peak grows with the file; cubepipe's ingest maps input blocks, and its export writes "
    "with pwrite (no map: a full disk is an error, not SIGBUS). Goal (issue 3): each cubepipe case "
    f"within {TIME_GOAL}x of its own floor, peak RSS at 4x at most {RSS_GOAL}x that at 1x; "
    "see 'Paired ratios' below. codec_floor_encode / codec_floor_decode: the codec work "
    "alone (encode the cube's bytes / read and decode the store's chunks, one thread per "
    "core, nothing written); x_floor: ingest rows over the first, export rows over the "
    "second."
)


# -- paired ratios (appended to the result table after a full run) -----------------------


def _verdict(ratio: float, goal: float) -> str:
    return "yes" if ratio <= goal else "**no**"


def paired_tables(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: each cubepipe case against its floor, then peak RSS 4x / 1x."""
    by = {(r["size"], r["case"]): r for r in rows}
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    lines = [
        "## Paired ratios",
        "",
        "Each cubepipe case against the floor that does the same job by hand.",
        "",
        "| size | case | floor | seconds | floor seconds | ratio | within "
        f"{TIME_GOAL}x | peak RSS MB | floor peak RSS MB |",
        "|" + "---|" * 9,
    ]
    for size in sizes:
        for case, floor in PAIRS.items():
            c, f = by.get((size, case)), by.get((size, floor))
            if c is None or f is None:
                continue
            ratio = c["seconds"] / f["seconds"]
            lines.append(
                f"| {size} | {case} | {floor} | {c['seconds']} | {f['seconds']} | "
                f"{ratio:.2f} | {_verdict(ratio, TIME_GOAL)} | {c['peak_rss_mb']} | "
                f"{f['peak_rss_mb']} |"
            )
    if "1x" in sizes and "4x" in sizes:
        lines += [
            "",
            f"Peak memory at 4x over 1x (goal for cubepipe: at most {RSS_GOAL}x). Anonymous "
            "memory (arrays, heap) is what can run a machine out of memory; VmHWM also counts "
            "file pages of inputs/outputs the process mapped, which the kernel can drop.",
            "",
            f"| case | anon 1x MB | anon 4x MB | anon 4x / 1x | within {RSS_GOAL}x | "
            "VmHWM 1x MB | VmHWM 4x MB | VmHWM 4x / 1x |",
            "|" + "---|" * 8,
        ]
        for case in CASES:
            one, four = by.get(("1x", case)), by.get(("4x", case))
            if one is None or four is None:
                continue
            anon = four["peak_anon_mb"] / one["peak_anon_mb"]
            hwm = four["peak_rss_mb"] / one["peak_rss_mb"]
            lines.append(
                f"| {case} | {one['peak_anon_mb']} | {four['peak_anon_mb']} | {anon:.2f} | "
                f"{_verdict(anon, RSS_GOAL) if case in PAIRS else '-'} | {one['peak_rss_mb']} | "
                f"{four['peak_rss_mb']} | {hwm:.2f} |"
            )
    return lines


def _append_paired(started: float) -> None:
    """After a full run (``main`` wrote this run's JSON), append the paired tables."""
    if "--child" in sys.argv or "--quick" in sys.argv:
        return
    js, md = RESULTS / f"{NAME}.json", RESULTS / f"{NAME}.md"
    if not js.exists() or js.stat().st_mtime < started or not md.exists():
        return
    lines = paired_tables(json.loads(js.read_text())["rows"])
    with md.open("a") as fh:
        fh.write("\n" + "\n".join(lines) + "\n")
    print("\n".join(line for line in lines if line.startswith("| ")))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--make-inputs"]:
        make_inputs(sys.argv[2])
        sys.exit()
    started = time.time()
    main(
        NAME,
        CASES,
        baseline=BASELINE,
        sizes=("1x", "4x"),
        quick_size="tiny",
        prepare=prepare,
        notes=NOTES,
        floor=CODEC_FLOORS,
    )
    _append_paired(started)
