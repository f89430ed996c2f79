"""Is cubepipe's direct chunk I/O (storage/chunkio.py) still faster than zarr-python's codec
pipelines? A whole-store copy and a whole-store read through each (issue 16).

Every copy case reads the whole input store and writes an identical copy (a zarr-to-zarr
copy, chunk by chunk, the same codec chain: cubepipe's default (``bytes`` -> ``blosc`` lz4
-> ``crc32c`` since issue 19; results/bench_zarr_pipeline.md was measured on ``zstd`` 1 stores),
the same chunks, the same fill value, every chunk written), on dask's threaded scheduler
with 2 threads, each case in its own process:

- ``cubepipe_direct``: ``write_cube(open_cube(IN), OUT)``: cubepipe's own path, whose
  direct chunk reads and writes (storage/chunkio.py) take every variable of these stores
  (baseline; it also writes provenance, the completion marker and consolidated metadata);
- ``zarr_python_default``: the same copy through zarr-python's default codec pipeline
  (``BatchedCodecPipeline``): ``dask.array.from_zarr`` of every array of the input group,
  ``da.store`` into arrays created with the input's metadata
  (``write_empty_chunks=True``, as cubepipe writes), then consolidated metadata;
- ``zarrs_pipeline``: the same as ``zarr_python_default`` with the zarrs codec pipeline
  (Rust; package ``zarrs``) enabled in the process:
  ``zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline",
  "codec_pipeline.strict": True})``. ``strict`` makes zarrs raise instead of falling back
  to zarr-python's pipeline, so every chunk went through zarrs. Its concurrency settings
  (``threading.max_workers``, ``codec_pipeline.chunk_concurrent_minimum``/``maximum``) are
  left at their defaults (the machine's CPU count; 4);
- ``cubepipe_via_zarr_python`` / ``cubepipe_via_zarrs``: cubepipe's own
  ``write_cube(open_cube(IN), OUT)`` with its direct chunk I/O switched off in that process
  (``CUBEPIPE_DIRECT_IO=0``: every variable is read through xarray/zarr-python and written
  with ``zarr.Array.__setitem__`` per block, cubepipe's path for layouts chunkio does not
  take), through zarr-python's default pipeline / through zarrs: what cubepipe would cost
  if chunkio were removed.

Read cases (``*_read``): the same paths, reading the whole ``cube`` variable and reducing
it to one number (``nansum`` in float64), nothing written. Their ratios in the summary are
to ``cubepipe_direct_read``.

The zarr-python cases open the stores as ``LocalStore`` (``zarr.open_group``/``open_array``
of the path), the only local store zarrs takes: ``da.from_zarr`` of a path string (what
``_common.zarr_copy``'s callers, the ``copy_floor`` cases of other benchmarks, read
through) opens an fsspec ``FsspecStore``, and zarrs would hand its chunks back to
zarr-python's pipeline. The dask cases check which pipeline their arrays use.

Floors (issue 19, ``_common.floor_case``): ``floor_copy`` reads and decodes every chunk of
the input and encodes as many bytes with cubepipe's default codec; ``floor_read`` reads and
decodes ``cube``'s chunks; one thread per core, nothing written. ``x_floor``: each copy
over ``floor_copy``, each read over ``floor_read``.

Each case times only its copy (or read) and returns those ``seconds`` (and ``cpu_s``, the
process's CPU time in them, all threads: less disturbed by other load on the machine than
the wall time); after it, untimed (``verify_s``), it checks that it did the whole work: a
copy's ``cube`` must be bit-identical to the input's (every chunk compared as bytes, read
back through zarr-python's default pipeline), with the same codecs, chunks and fill value
and as many chunk files; its coordinate arrays equal; a read's sum must equal the sum
zarr-python's default pipeline gives.

Inputs: the stores bench_standardize and bench_pca use (made by their ``prepare``, once,
untimed, in ``_common.INPUTS``): ``1x`` = 15 x 2500 x 2500 float32 (357 MiB, chunks 15 x
512 x 512; ``standardize-1x.zarr``), ``224b`` = 224 x 1024 x 1024 float32 (896 MiB, chunks
224 x 256 x 256; ``pca-224b.zarr``), ``tiny`` (``standardize-tiny.zarr``) for ``--quick``.
Run ``python benchmarks/bench_zarr_pipeline.py`` (``--size 1x`` for one size, ``--quick``
for a smoke run). Needs the ``bench`` extra (``zarrs``); without it ``--quick`` runs the
other cases only.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from cubepipe.storage import open_cube, write_cube
from cubepipe.storage.chunkio import direct_io_enabled

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pca
import bench_standardize
from _common import cube_bytes, floor_case, main

try:
    import zarrs
except ImportError:  # the bench extra is not installed
    zarrs = None

warnings.filterwarnings("ignore", message="Consolidated metadata")

NAME = "bench_zarr_pipeline"
BASELINE = "cubepipe_direct"
READ_BASELINE = "cubepipe_direct_read"
THREADS = 2
DIRECT_IO_ENV = "CUBEPIPE_DIRECT_IO"
DEFAULT_PIPELINE = "zarr.core.codec_pipeline.BatchedCodecPipeline"
ZARRS = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline", "codec_pipeline.strict": True}


# -- inputs -------------------------------------------------------------------------------


def _input(size: str) -> Path:
    if size == "224b":
        return bench_pca._store(size)
    return bench_standardize._input(size)


def prepare(size: str) -> None:
    if size == "224b":
        bench_pca.prepare(size)
    else:
        bench_standardize.prepare(size)


# -- the paths ----------------------------------------------------------------------------


@contextmanager
def _threads() -> Iterator[None]:
    """dask's threaded scheduler with 2 threads (the function, not its name: resolving the
    name imports dask.distributed, see pipeline/scheduling.py)."""
    with dask.config.set(scheduler=dask.threaded.get, num_workers=THREADS):
        yield


@contextmanager
def _pipeline(name: str) -> Iterator[None]:
    """zarr-python's default codec pipeline, or zarrs' (``name`` "zarrs"), for the arrays
    opened and the chunks read and written inside."""
    if name == "zarrs":
        with zarr.config.set(ZARRS):
            yield
    else:
        with zarr.config.set({"codec_pipeline.path": DEFAULT_PIPELINE}):
            yield


@contextmanager
def _without_direct_io() -> Iterator[None]:
    """cubepipe with storage/chunkio.py switched off (``CUBEPIPE_DIRECT_IO=0``): open_cube
    and write_cube take their zarr-python path for every variable."""
    saved = os.environ.get(DIRECT_IO_ENV)
    os.environ[DIRECT_IO_ENV] = "0"
    try:
        assert not direct_io_enabled()
        yield
    finally:
        if saved is None:
            del os.environ[DIRECT_IO_ENV]
        else:
            os.environ[DIRECT_IO_ENV] = saved


def _zarr_copy(src_path: Path, out_path: Path) -> None:
    """Copy every array of the group with dask through zarr-python (whatever codec
    pipeline is configured), each with the input's metadata, every chunk written."""
    src = zarr.open_group(str(src_path), mode="r")
    out = zarr.create_group(str(out_path), attributes=dict(src.attrs), zarr_format=3)
    sources, targets = [], []
    for name, arr in src.arrays():
        _checked(arr)
        targets.append(
            out.create_array(
                name,
                shape=arr.shape,
                chunks=arr.chunks,
                dtype=arr.dtype,
                fill_value=arr.metadata.fill_value,
                serializer=arr.serializer,
                compressors=arr.compressors,
                dimension_names=arr.metadata.dimension_names,
                attributes=dict(arr.attrs),
                config={"write_empty_chunks": True},
            )
        )
        _checked(targets[-1])
        sources.append(da.from_zarr(arr))
    da.store(sources, targets, lock=False)
    zarr.consolidate_metadata(str(out_path))


def _local_array(path: Path) -> zarr.Array:
    """The array in a ``LocalStore``. (``da.from_zarr`` of a path string opens it through
    fsspec's ``FsspecStore``, which zarrs does not take: its chunks would go through
    zarr-python's pipeline instead.)"""
    return _checked(zarr.open_array(str(path), mode="r"))


def _checked(arr: zarr.Array) -> zarr.Array:
    """``arr``, after checking that it uses the codec pipeline configured now."""
    want = zarr.config.get("codec_pipeline.path").rsplit(".", 1)[-1]
    got = type(arr._async_array.codec_pipeline).__name__
    if got != want:
        raise AssertionError(f"{arr.path!r} uses {got}, not the configured {want}")
    return arr


def _nansum(arr: da.Array) -> float:
    return float(da.nansum(arr, dtype=np.float64).compute())


# -- verification (untimed) ---------------------------------------------------------------


def _chunk_files(array_dir: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(array_dir / "c"))


def _verify_copy(src_path: Path, out_path: Path) -> None:
    """The copy's ``cube`` is the input's, bit for bit, chunk by chunk (read back through
    zarr-python's default pipeline), with the same layout; its coordinates are equal."""
    with _pipeline("default"):
        src = zarr.open_group(str(src_path), mode="r")
        out = zarr.open_group(str(out_path), mode="r")
        a, b = src["cube"], out["cube"]
        assert isinstance(a, zarr.Array) and isinstance(b, zarr.Array)
        assert (a.shape, a.chunks, a.dtype) == (b.shape, b.chunks, b.dtype), (a, b)
        assert a.metadata.codecs == b.metadata.codecs, (a.metadata.codecs, b.metadata.codecs)
        fa, fb = np.asarray(a.metadata.fill_value), np.asarray(b.metadata.fill_value)
        assert fa.tobytes() == fb.tobytes(), (fa, fb)
        n_in, n_out = _chunk_files(src_path / "cube"), _chunk_files(out_path / "cube")
        assert n_in == n_out == int(np.prod(a.cdata_shape)), (n_in, n_out, a.cdata_shape)
        for idx in np.ndindex(*a.cdata_shape):
            x, y = a.blocks[idx], b.blocks[idx]
            if x.shape != y.shape or not np.array_equal(x.view(np.uint8), y.view(np.uint8)):
                raise AssertionError(f"chunk {idx} of the copy differs from the input's")
        for name in ("band", "wavelength"):
            if name in src:
                assert np.array_equal(src[name][...], out[name][...]), name


def _verify_sum(src_path: Path, got: float) -> None:
    with _pipeline("default"), _threads():
        want = _nansum(da.from_zarr(_local_array(src_path / "cube")))
    if not np.isclose(got, want, rtol=1e-12, atol=0):
        raise AssertionError(f"sum {got!r} read, {want!r} expected")


# -- cases --------------------------------------------------------------------------------


def _since(t: float) -> float:
    return round(time.perf_counter() - t, 2)


def _copy_case(copy: Callable[[Path, Path], None]) -> Callable[[str, Path], dict[str, Any]]:
    def case(size: str, workdir: Path) -> dict[str, Any]:
        src, out = _input(size), workdir / "out.zarr"
        t0, c0 = time.perf_counter(), time.process_time()
        copy(src, out)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        t1 = time.perf_counter()
        _verify_copy(src, out)
        # "seconds" replaces _common's whole-case time: the copy alone, not the check
        return {"seconds": seconds, "cpu_s": round(cpu, 2), "verify_s": _since(t1)}

    return case


def _read_case(read: Callable[[Path], float]) -> Callable[[str, Path], dict[str, Any]]:
    def case(size: str, workdir: Path) -> dict[str, Any]:
        src = _input(size)
        t0, c0 = time.perf_counter(), time.process_time()
        got = read(src)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        t1 = time.perf_counter()
        _verify_sum(src, got)
        return {"seconds": seconds, "cpu_s": round(cpu, 2), "verify_s": _since(t1)}

    return case


def _cubepipe_copy(src: Path, out: Path) -> None:
    write_cube(open_cube(src), out, op="copy")


def _cubepipe_read(src: Path) -> float:
    return _nansum(open_cube(src)["cube"].data)


def _on(pipeline: str, fn: Callable[..., Any], *, direct: bool = True) -> Callable[..., Any]:
    """``fn`` run with zarr's codec pipeline ``pipeline`` (and cubepipe's direct chunk I/O
    on or off)."""

    def run(*args: Any) -> Any:
        with _pipeline(pipeline), _threads():
            if direct:
                return fn(*args)
            with _without_direct_io():
                return fn(*args)

    return run


def _zarr_read(src: Path) -> float:
    return _nansum(da.from_zarr(_local_array(src / "cube")))


CASES: dict[str, Callable[[str, Path], dict[str, Any]]] = {
    "cubepipe_direct": _copy_case(_on("default", _cubepipe_copy)),
    "zarr_python_default": _copy_case(_on("default", _zarr_copy)),
    "zarrs_pipeline": _copy_case(_on("zarrs", _zarr_copy)),
    "cubepipe_via_zarr_python": _copy_case(_on("default", _cubepipe_copy, direct=False)),
    "cubepipe_via_zarrs": _copy_case(_on("zarrs", _cubepipe_copy, direct=False)),
    "cubepipe_direct_read": _read_case(_on("default", _cubepipe_read)),
    "zarr_python_default_read": _read_case(_on("default", _zarr_read)),
    "zarrs_pipeline_read": _read_case(_on("zarrs", _zarr_read)),
    "cubepipe_via_zarr_python_read": _read_case(_on("default", _cubepipe_read, direct=False)),
    "cubepipe_via_zarrs_read": _read_case(_on("zarrs", _cubepipe_read, direct=False)),
}
#: The codec work alone (``_common.floor_case``, issue 19): a copy reads and decodes every
#: chunk of the store and encodes as many bytes; a read decodes ``cube``'s chunks.
CASES |= {
    "floor_copy": floor_case(lambda size: [_input(size)], lambda size: cube_bytes(_input(size))),
    "floor_read": floor_case(lambda size: [_input(size) / "cube"], lambda size: 0),
}
FLOORS = {case: "floor_read" if case.endswith("_read") else "floor_copy" for case in CASES}
if zarrs is None:
    if "--quick" not in sys.argv:
        raise SystemExit("bench_zarr_pipeline needs the zarrs package: pip install -e '.[bench]'")
    print("zarrs is not installed: its cases are left out of this smoke run", flush=True)
    CASES = {k: v for k, v in CASES.items() if "zarrs" not in k}


def summary(rows: list[dict[str, Any]]) -> str:
    """Copies against ``cubepipe_direct``, reads against ``cubepipe_direct_read``."""
    versions = f"zarr {zarr.__version__}"
    if zarrs is not None:
        versions += f", zarrs {getattr(zarrs, '__version__', '?')}"
    lines = [
        f"Versions: {versions}, dask {dask.__version__}. Copies against `{BASELINE}`, reads "
        f"against `{READ_BASELINE}` (below 1.0: faster than cubepipe's direct chunk I/O).",
        "",
        "| size | case | seconds | ratio | x_floor | runs | cpu_s | cpu ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in dict.fromkeys(r["size"] for r in rows):
        mine = [r for r in rows if r["size"] == size]
        base = {r["case"]: r for r in mine}
        for r in mine:
            read = r["case"].endswith("_read") or r["case"] == "floor_read"
            ref = base.get(READ_BASELINE if read else BASELINE)
            ratio = f"{r['seconds'] / ref['seconds']:.2f}" if ref else ""
            cpu_ratio = f"{r['cpu_s'] / ref['cpu_s']:.2f}" if ref and ref["cpu_s"] else ""
            runs = ", ".join(f"{s:.2f}" for s in r.get("runs", []))
            lines.append(
                f"| {size} | {r['case']} | {r['seconds']} | {ratio} | {r.get('x_floor', '')} | "
                f"{runs} | {r['cpu_s']} "
                f"| {cpu_ratio} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main(
        NAME,
        CASES,
        baseline=BASELINE,
        sizes=("1x", "224b"),
        quick_size="tiny",
        prepare=prepare,
        columns=("cpu_s", "verify_s"),
        summary=summary,
        floor=FLOORS,
        notes="Whole-store copy (read + write, same codecs and chunks, every chunk written) "
        "and whole-store read (float64 nansum of `cube`) of a cubepipe store, dask threaded "
        "scheduler with 2 threads. `seconds`: the copy or read alone; `cpu_s`: the process's "
        "CPU time (all threads) in that time; the bit-identity check after it (`verify_s`) "
        "is not timed. `ratio_to_cubepipe_direct` is to the copy baseline for every row; "
        "the summary below gives the reads against `cubepipe_direct_read`. "
        "`cubepipe_via_*`: cubepipe's open_cube/write_cube with storage/chunkio.py switched "
        "off (CUBEPIPE_DIRECT_IO=0). Inputs are read from the page cache. Where other work "
        "shares the machine the wall times spread (see `runs` below): compare `cpu_s` too. "
        "floor_copy / floor_read: the codec work alone (every chunk read and decoded, for a "
        "copy as many bytes encoded with cubepipe's default codec; one thread per core, "
        "nothing written); x_floor: copies over floor_copy, reads over floor_read.",
    )
