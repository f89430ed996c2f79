"""Writing a cube store: cubepipe's write_cube beside what a user would do instead.

Cases (each in its own process, same synthetic 15-band cube generated lazily):
- ``xarray_to_zarr``: ``ds.to_zarr(path)`` with the same codecs (cubepipe's default chain,
  ``default_compressors()``), the naive xarray way (baseline);
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

- ``generate_only``: compute the synthetic cube's chunks and drop them: the part of every
  write case that is not storage (generation is CPU-heavy; compare write cases with it).
- ``floor_write`` / ``floor_read``: the codec floor (``_common.floor_case``): encoding the
  cube's bytes with the default chain / decoding every chunk of the unsharded store, on
  both cores, nothing else; every row's ``x_floor`` is its seconds over its floor's.

The zarr cases report ``files``: files in the store, what an HPC file system or an object
store has to handle.

Sizes: ``1x`` = 15 x 2500 x 2500 (357 MiB), ``4x`` = 15 x 5000 x 5000. Run:
``python benchmarks/bench_store.py`` (``--quick`` for a smoke run).

``python benchmarks/bench_store.py --codecs`` (issue 19) instead measures candidate codec
chains chunk by chunk on real cubes (../shared/data, or ``$CUBEPIPE_DATA``), their
standardized versions and PCA scores, and the synthetic cube: compression ratio, encode
and decode GB/s per CPU second on one worker thread and GB/s wall on two threads; it
writes ``results/bench_store_codecs.md`` (``--quick``: smaller, shorter, no files). The
default chain was chosen from that table (docs/DESIGN.md, "Codec").
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import open_cube, store_state, write_cube
from cubepipe.storage.store import default_compressors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import INPUTS, floor_case, main

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


def generate_only(size: str, workdir: Path) -> dict[str, Any]:
    """Compute every chunk of the synthetic cube and drop it: what each write case pays
    before any codec (its time is not in the write floor)."""
    _cube(size)["cube"].data.map_blocks(lambda b: b[:0, :0, :0], dtype=np.float32).compute()
    return {}


def numpy_in_memory(size: str, workdir: Path) -> dict[str, Any]:
    np.save(workdir / "out.npy", _cube(size)["cube"].values)
    return {}


def _cube_bytes(size: str) -> int:
    return int(np.prod(SIZES[size])) * 4  # float32


#: The codec floor of the write cases: encoding the cube's bytes with the default chain
#: (both cores), nothing generated, nothing written.
floor_write = floor_case(lambda size: [_stored(size, False)], _cube_bytes, reads=0)
#: The codec floor of the read cases: decoding every chunk of the unsharded store.
floor_read = floor_case(lambda size: [_stored(size, False)], lambda size: 0)
FLOORS = {
    "xarray_to_zarr": "floor_write",
    "cubepipe_write": "floor_write",
    "cubepipe_write_durable": "floor_write",
    "cubepipe_write_sharded": "floor_write",
    "numpy_in_memory": "floor_write",
    "cubepipe_read": "floor_read",
    "cubepipe_read_sharded": "floor_read",
}


# ---------------------------------------------------------------------------------------
# Codec table (``--codecs``): which codec chain should cubepipe write? (issue 19)
# ---------------------------------------------------------------------------------------

#: Where the real cubes live (not in the repository; see ../shared/data/SOURCES.md).
DATA = Path(
    os.environ.get("CUBEPIPE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
#: Chunk shape the store writes (band whole up to 15, 512 x 512).
CHUNK = (15, 512, 512)


def _chains() -> dict[
    str, tuple[Callable[[np.ndarray], bytes], Callable[[bytes, np.ndarray], None]]
]:
    """Codec chains, each ``(encode(array) -> bytes, decode(bytes, out))``, using the
    numcodecs calls zarr-python's v3 codecs make (``zstd``, ``blosc``, ``crc32c``). Only
    zarr v3 core codecs, so xarray, zarr-python and tensorstore all read the store."""
    import google_crc32c  # noqa: PLC0415
    from numcodecs import Blosc, Zstd  # noqa: PLC0415

    def zstd(level: int):
        codec = Zstd(level=level, checksum=True)
        return (codec.encode, lambda b, out: codec.decode(b, out=out))

    def blosc(cname: str, clevel: int, shuffle: int):
        codec = Blosc(cname=cname, clevel=clevel, shuffle=shuffle, typesize=4, blocksize=0)

        def enc(a: np.ndarray) -> bytes:
            body = codec.encode(a)
            return body + np.uint32(google_crc32c.value(body)).tobytes()

        def dec(b: bytes, out: np.ndarray) -> None:
            view = np.frombuffer(b, dtype=np.uint8)
            if np.uint32(google_crc32c.value(view[:-4])).tobytes() != b[-4:]:
                raise ValueError("crc32c mismatch")
            codec.decode(view[:-4], out=out)

        return (enc, dec)

    chains = {"zstd1": zstd(1), "zstd3": zstd(3)}
    for shuf, tag in (
        (Blosc.SHUFFLE, "shuf"),
        (Blosc.BITSHUFFLE, "bitshuf"),
        (Blosc.NOSHUFFLE, "noshuf"),
    ):
        chains[f"blosc-lz4-5-{tag}"] = blosc("lz4", 5, shuf)
        chains[f"blosc-zstd1-{tag}"] = blosc("zstd", 1, shuf)
    chains["blosc-lz4-1-shuf"] = blosc("lz4", 1, Blosc.SHUFFLE)
    chains["blosc-lz4hc-5-shuf"] = blosc("lz4hc", 5, Blosc.SHUFFLE)
    chains["blosc-zstd3-shuf"] = blosc("zstd", 3, Blosc.SHUFFLE)
    return chains


def _chunks_of(cube: np.ndarray, limit: int) -> list[np.ndarray]:
    """Up to ``limit`` chunks (:data:`CHUNK`) of a (band, y, x) float32 cube, C-contiguous."""
    out = []
    for b in range(0, cube.shape[0], CHUNK[0]):
        for y in range(0, cube.shape[1], CHUNK[1]):
            for x in range(0, cube.shape[2], CHUNK[2]):
                out.append(
                    np.ascontiguousarray(cube[b : b + CHUNK[0], y : y + CHUNK[1], x : x + CHUNK[2]])
                )
                if len(out) == limit:
                    return out
    return out


def _standardized(cube: np.ndarray) -> np.ndarray:
    mean = np.nanmean(cube, axis=(1, 2), keepdims=True)
    std = np.nanstd(cube, axis=(1, 2), keepdims=True)
    return ((cube - mean) / np.where(std > 0, std, 1)).astype(np.float32)


def _pca_scores(cube: np.ndarray, k: int = 15) -> np.ndarray:
    """Scores of the first ``k`` principal components (what ``compress`` writes)."""
    b = cube.shape[0]
    flat = cube.reshape(b, -1).astype(np.float64)
    ok = np.isfinite(flat).all(axis=0)
    x = flat[:, ok] - flat[:, ok].mean(axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(x @ x.T)
    comps = vecs[:, ::-1][:, : min(k, b)]
    scores = np.full((comps.shape[1], flat.shape[1]), np.nan)
    scores[:, ok] = comps.T @ x
    return scores.reshape(-1, *cube.shape[1:]).astype(np.float32)


def codec_cubes(quick: bool) -> dict[str, np.ndarray]:
    """The float32 (band, y, x) cubes the table measures: real scenes (as float32, as
    ingest writes them), their standardized versions and PCA scores, and the synthetic
    bench cube."""
    from cubepipe.storage.readers.base import open_source  # noqa: PLC0415

    cubes: dict[str, np.ndarray] = {}
    ip = np.load(DATA / "indian_pines" / "Indian_pines_corrected.npy").astype(np.float32)
    cubes["indian_pines"] = np.moveaxis(ip, -1, 0).copy()
    corn = open_source(DATA / "envi" / "plantcv" / "corn-kernel-hyperspectral.hdr")
    cubes["envi_corn"] = np.asarray(next(iter(corn.data_vars.values())).values, dtype=np.float32)
    fenix = open_source(DATA / "envi" / "hylite_fenix" / "Radiometric_2x2_1x1.hdr")
    cubes["envi_fenix"] = np.asarray(next(iter(fenix.data_vars.values())).values, dtype=np.float32)
    import tifffile  # noqa: PLC0415

    bands = sorted(p for p in (DATA / "landsat8").glob("l8_B*.tif") if p.stem != "l8_BQA")
    cubes["landsat8"] = np.stack([tifffile.imread(p) for p in bands]).astype(np.float32)
    for name in list(cubes):
        cubes[name + "_std"] = _standardized(cubes[name])
    cubes["indian_pines_pca"] = _pca_scores(cubes["indian_pines"])
    cubes["landsat8_pca"] = _pca_scores(cubes["landsat8"], 5)
    size = (15, 600, 600) if quick else (15, 2500, 2500)
    synth = make_cube(size, seed=0)["cube"]
    cubes["synthetic"] = np.asarray(synth[:, :1024, :1024].values if not quick else synth.values)
    cubes["synthetic_pca"] = _pca_scores(cubes["synthetic"], 5)
    return cubes


def _timed(fn: Callable[[], None], min_seconds: float) -> tuple[float, float, int]:
    """(wall, CPU of this thread, rounds) for running ``fn`` until ``min_seconds`` passed."""
    rounds, w0, c0 = 0, time.perf_counter(), time.thread_time()
    while True:
        fn()
        rounds += 1
        if time.perf_counter() - w0 >= min_seconds:
            return time.perf_counter() - w0, time.thread_time() - c0, rounds


def codec_row(chain, chunks: list[np.ndarray], min_seconds: float) -> dict[str, float]:
    """Ratio and throughput of one chain on ``chunks``: single-threaded (CPU seconds of the
    calling thread, a worker thread as under dask) and 2 threads at once (wall time)."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    enc, dec = chain
    raw = sum(c.nbytes for c in chunks)
    encoded = [enc(c) for c in chunks]
    outs = [np.empty_like(c) for c in chunks]
    for e, o, c in zip(encoded, outs, chunks, strict=True):
        dec(e, o)
        if not np.array_equal(o, c, equal_nan=True):
            raise AssertionError("codec round trip differs")

    def enc_all(items=chunks) -> None:
        for c in items:
            enc(c)

    def dec_all(items: Any = None) -> None:
        for i in range(len(chunks)) if items is None else items:
            dec(encoded[i], outs[i])

    with ThreadPoolExecutor(2) as pool:  # off the main thread, as dask runs chunks
        _, enc_cpu, enc_n = pool.submit(_timed, enc_all, min_seconds).result()
        _, dec_cpu, dec_n = pool.submit(_timed, dec_all, min_seconds).result()

        # 2 threads: each takes every other chunk, both for min_seconds; wall time of the two
        idx = list(range(len(chunks)))
        res = [
            pool.submit(_timed, (lambda k=k: enc_all([chunks[i] for i in idx[k::2]])), min_seconds)
            for k in (0, 1)
        ]
        enc2 = [r.result() for r in res]
        res = [pool.submit(_timed, (lambda k=k: dec_all(idx[k::2])), min_seconds) for k in (0, 1)]
        dec2 = [r.result() for r in res]
    half = [sum(chunks[i].nbytes for i in idx[k::2]) for k in (0, 1)]
    enc2_gbs = sum(h * n / w for h, (w, _, n) in zip(half, enc2, strict=True)) / 1e9
    dec2_gbs = sum(h * n / w for h, (w, _, n) in zip(half, dec2, strict=True)) / 1e9
    return {
        "ratio": raw / sum(len(e) for e in encoded),
        "enc_gbs": raw * enc_n / enc_cpu / 1e9,
        "dec_gbs": raw * dec_n / dec_cpu / 1e9,
        "enc2_gbs": enc2_gbs,
        "dec2_gbs": dec2_gbs,
        "enc_cpu_s_per_gb": enc_cpu / (raw * enc_n / 1e9),
        "dec_cpu_s_per_gb": dec_cpu / (raw * dec_n / 1e9),
    }


def codec_table(quick: bool) -> None:
    """Measure every chain on every cube; print and (unless quick) write
    ``results/bench_store_codecs.{md,json}``."""
    cubes = codec_cubes(quick)
    chains = _chains()
    min_seconds = 0.05 if quick else 0.4
    load = os.getloadavg()[0]
    rows = []
    for cname, cube in cubes.items():
        chunks = _chunks_of(cube, 2 if quick else 4)
        for name, chain in chains.items():
            r = {"cube": cname, "chain": name, **codec_row(chain, chunks, min_seconds)}
            rows.append(r)
            print(
                f"{cname:<20} {name:<22} ratio {r['ratio']:5.2f}  enc {r['enc_gbs']:5.2f} "
                f"dec {r['dec_gbs']:5.2f} GB/s (1 thread, CPU)  2 threads enc "
                f"{r['enc2_gbs']:5.2f} dec {r['dec2_gbs']:5.2f} GB/s (wall)",
                flush=True,
            )
    summary = _codec_summary(rows, list(chains))
    print(summary)
    if quick:
        return
    from _common import RESULTS, machine  # noqa: PLC0415

    meta = {**machine(), "load_1min_at_start": load, "load_1min_at_end": os.getloadavg()[0]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_store_codecs.json").write_text(
        json.dumps({"machine": meta, "rows": rows}, indent=2)
    )
    lines = [
        "# bench_store --codecs",
        "",
        f"Machine: {meta['cpus']} CPUs, Python {meta['python']}, {meta['platform']}, "
        f"{meta['date']}; 1-min load {load:.1f} at start, {meta['load_1min_at_end']:.1f} at "
        "end. Chunks of 15 x 512 x 512 float32 (smaller cubes: the whole extent); ratio = "
        "raw / encoded bytes; enc/dec = GB/s of raw data per CPU second of one worker "
        "thread; enc2/dec2 = GB/s wall with 2 threads at once (2 cores: 2x the 1-thread "
        "figure means the codec releases the GIL). Blosc chains include the crc32c codec "
        "after blosc (encode and verify); zstd chains carry zstd's own frame checksum.",
        "",
        summary,
    ]
    (RESULTS / "bench_store_codecs.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'bench_store_codecs.md'}")


def _codec_summary(rows: list[dict[str, Any]], chains: list[str]) -> str:
    """Per chain: geometric means over the cubes, and the ratio range; then per cube."""
    lines = [
        "| chain | ratio (geo mean) | ratio min-max | enc GB/s | dec GB/s | enc2 GB/s | dec2 GB/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in chains:
        rs = [r for r in rows if r["chain"] == name]

        def gm(key: str, rs=rs) -> float:
            return float(np.exp(np.mean([np.log(r[key]) for r in rs])))

        lo, hi = min(r["ratio"] for r in rs), max(r["ratio"] for r in rs)
        lines.append(
            f"| {name} | {gm('ratio'):.3f} | {lo:.2f}-{hi:.2f} | {gm('enc_gbs'):.2f} | "
            f"{gm('dec_gbs'):.2f} | {gm('enc2_gbs'):.2f} | {gm('dec2_gbs'):.2f} |"
        )
    cubes = list(dict.fromkeys(r["cube"] for r in rows))
    lines += ["", "Ratio per cube:", "", "| chain | " + " | ".join(cubes) + " |"]
    lines.append("|---|" + "---|" * len(cubes))
    for name in chains:
        got = {r["cube"]: r["ratio"] for r in rows if r["chain"] == name}
        lines.append(f"| {name} | " + " | ".join(f"{got[c]:.2f}" for c in cubes) + " |")
    return "\n".join(lines)


if __name__ == "__main__" and "--codecs" in sys.argv:
    codec_table(quick="--quick" in sys.argv)
elif __name__ == "__main__":
    main(
        "bench_store",
        {
            "xarray_to_zarr": xarray_to_zarr,
            "cubepipe_write": cubepipe_write,
            "cubepipe_write_durable": cubepipe_write_durable,
            "cubepipe_write_sharded": cubepipe_write_sharded,
            "numpy_in_memory": numpy_in_memory,
            "generate_only": generate_only,
            "cubepipe_read": cubepipe_read,
            "cubepipe_read_sharded": cubepipe_read_sharded,
            "floor_write": floor_write,
            "floor_read": floor_read,
        },
        baseline="xarray_to_zarr",
        floor=FLOORS,
        sizes=("1x", "4x"),
        quick_size="tiny",
        prepare=prepare,
        columns=("files",),
        notes="Write a lazily generated synthetic cube (generation time is included in "
        "every write case alike; generate_only is that time alone, so a write case's "
        "storage cost is roughly its seconds minus generate_only's).",
    )
