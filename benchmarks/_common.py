"""Shared benchmark plumbing: run each case in its own process, time it, read its peak RSS,
and write the result table (markdown + JSON) under benchmarks/results/.

A benchmark script defines ``CASES = {name: function(size, workdir) -> dict}`` and calls
:func:`main`. Every case runs in a fresh child process that reports its own peak resident
memory (``VmHWM``); the parent reports ratios to a baseline. ``--quick`` (the test suite's
smoke run) runs every case once in the parent instead: it checks that the cases work, not
how fast or small they are.

:func:`floor_case` makes the "floor" row of issue 19 (decode + encode at the measured codec
throughput for that cube); ``main(..., floor="floor")`` then gives every row ``x_floor``.
Inputs live under :data:`INPUTS`, whose name carries a hash of cubepipe's default codec
chain, so a codec change rebuilds them instead of benchmarking stores of the old codec.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

Case = Callable[[str, Path], dict[str, Any]]

_CODECS_ENV = "_CUBEPIPE_BENCH_CODECS"


def _default_codec_chain() -> list[dict[str, Any]]:
    """The codec chain (zarr.json ``codecs``) cubepipe writes a float32 variable with.

    Computed once by the parent (importing cubepipe) and handed to the child processes in
    an environment variable, so a child's time and memory do not include that import.
    """
    env = os.environ.get(_CODECS_ENV)
    if env:
        chain: list[dict[str, Any]] = json.loads(env)
        return chain
    import zarr  # noqa: PLC0415

    from cubepipe.storage.store import default_compressors  # noqa: PLC0415

    z = zarr.create_array(
        store=zarr.storage.MemoryStore(),
        shape=(1,),
        dtype="float32",
        compressors=default_compressors(),
    )
    chain = json.loads(json.dumps(z.metadata.to_dict()["codecs"]))
    os.environ[_CODECS_ENV] = json.dumps(chain)
    return chain


def _codec_tag(chain: list[dict[str, Any]]) -> str:
    names = "-".join(c["name"].replace("numcodecs.", "") for c in chain if c["name"] != "bytes")
    digest = hashlib.sha256(json.dumps(chain, sort_keys=True).encode()).hexdigest()[:8]
    return f"{names or 'raw'}-{digest}"


#: cubepipe's default codec chain, as zarr.json spells it (see :func:`_default_codec_chain`).
DEFAULT_CODECS = _default_codec_chain()
#: Inputs shared by the cases of one size (made once by ``prepare``); one folder per
#: default codec chain (e.g. ``/tmp/cubepipe-bench-inputs/zstd-1a2b3c4d``).
INPUTS = Path(tempfile.gettempdir()) / "cubepipe-bench-inputs" / _codec_tag(DEFAULT_CODECS)


class _AnonSampler(threading.Thread):
    """Samples this process's anonymous resident memory (``RssAnon``: heap, arrays; not
    file pages it has mapped, which the kernel can drop) every 10 ms; keeps the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.01):
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon:"))

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return max(self.peak_kb, _status_kb("RssAnon:")) / 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its waited-for children."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(cases: dict[str, Case], case: str, size: str, workdir: Path) -> dict[str, Any]:
    sampler = _AnonSampler()
    sampler.start()
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    extra = cases[case](size, workdir) or {}
    seconds = time.perf_counter() - t0
    cpu_s = _cpu_s() - cpu0
    anon = sampler.stop()
    result = {
        "seconds": seconds,
        "peak_rss_mb": _vm_hwm_mb(),
        "peak_anon_mb": anon,
        "cpu_s": round(cpu_s, 3),
    }
    if "seconds" in extra:  # the case times its own body (the floor: setup excluded)
        result["call_s"] = seconds
    return {**result, **extra}


def _child(cases: dict[str, Case], case: str, size: str, workdir: Path) -> None:
    result = _measure(cases, case, size, workdir)
    print("BENCH-RESULT " + json.dumps(result), flush=True)


def _vm_hwm_mb() -> float:
    """This process's own peak RSS. (``ru_maxrss`` of a child is not: on Linux it starts
    from the parent's high-water mark at fork/exec, so it over-reports.)"""
    return _status_kb("VmHWM:") / 1024


def _run_child(script: str, case: str, size: str, workdir: Path) -> dict[str, Any]:
    out_file = workdir / "child-stdout.txt"
    with out_file.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, script, "--child", case, "--size", size, "--workdir", str(workdir)],
            stdout=out,
        )
        proc.wait()
    if proc.returncode:
        raise SystemExit(f"benchmark case {case} ({size}) failed with exit {proc.returncode}")
    lines = out_file.read_text().splitlines()
    line = next(line for line in lines if line.startswith("BENCH-RESULT "))
    return json.loads(line.removeprefix("BENCH-RESULT "))


# -- the codec floor -----------------------------------------------------------------------


class _Crc32c:
    """zarr v3's ``crc32c`` codec: a little-endian CRC-32C of the data appended to it."""

    def encode(self, buf: Any) -> bytes:
        import google_crc32c  # noqa: PLC0415

        data = bytes(memoryview(buf).cast("B"))
        return data + int(google_crc32c.value(data)).to_bytes(4, "little")

    def decode(self, buf: Any) -> bytes:
        import google_crc32c  # noqa: PLC0415

        data = bytes(memoryview(buf).cast("B"))
        body, tail = data[:-4], data[-4:]
        if int(google_crc32c.value(body)).to_bytes(4, "little") != tail:
            raise ValueError("crc32c checksum mismatch")
        return bytes(body)


def _bytes_codecs(chain: list[dict[str, Any]], where: str) -> list[Any]:
    """numcodecs objects for the bytes-to-bytes codecs of a zarr v3 codec chain (in
    encoding order). ``bytes`` (little-endian on this machine: a no-op) and ``transpose``
    (a copy zarr makes in memory, not codec work) are left out."""
    import numcodecs  # noqa: PLC0415

    out: list[Any] = []
    for codec in chain:
        name, cfg = codec["name"], dict(codec.get("configuration") or {})
        if name in ("bytes", "transpose"):
            continue
        if name == "zstd":
            out.append(
                numcodecs.Zstd(level=cfg.get("level", 0), checksum=cfg.get("checksum", False))
            )
        elif name == "blosc":
            shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[
                cfg.get("shuffle", "noshuffle")
            ]
            out.append(
                numcodecs.Blosc(
                    cname=cfg.get("cname", "lz4"),
                    clevel=cfg.get("clevel", 5),
                    shuffle=shuffle,
                    blocksize=cfg.get("blocksize", 0),
                    typesize=cfg.get("typesize"),
                )
            )
        elif name == "gzip":
            out.append(numcodecs.GZip(level=cfg.get("level", 5)))
        elif name == "crc32c":
            out.append(_Crc32c())
        elif name.startswith("numcodecs."):
            out.append(numcodecs.get_codec({"id": name.removeprefix("numcodecs."), **cfg}))
        else:
            raise ValueError(
                f"floor_case: codec {name!r} of {where} is not supported (supported: bytes, "
                "transpose, zstd, blosc, gzip, crc32c, numcodecs.*); sharded arrays are not"
            )
    return out


def _arrays(path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every zarr v3 array at or under ``path`` (an array or a group), with its metadata."""
    for meta_file in sorted(path.rglob("zarr.json")):
        meta = json.loads(meta_file.read_text())
        if meta.get("node_type") == "array":
            yield meta_file.parent, meta


def chunk_reader(path: Path) -> tuple[list[Path], Callable[[Path], Any]]:
    """The chunk files of the one zarr v3 array at ``path`` and a function that reads and
    decodes one of them with the array's own codecs, trimmed to the array's extent (zarr
    pads edge chunks; cubepipe reads them trimmed): what the ``kernel_floor`` cases feed
    their kernels, with no dask, xarray or zarr around them."""
    import numpy as np  # noqa: PLC0415

    ((array_dir, meta),) = list(_arrays(Path(path)))
    codecs = _bytes_codecs(meta["codecs"], str(array_dir))
    shape = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    full = tuple(meta["shape"])

    def read(f: Path) -> Any:
        buf: Any = f.read_bytes()
        for codec in reversed(codecs):
            buf = codec.decode(buf)
        a = np.frombuffer(buf, dtype=meta["data_type"]).reshape(shape)
        index = [int(i) for i in f.relative_to(array_dir).parts[1:]]  # c/<i>/<j>/<k>
        keep = tuple(
            slice(0, min(n, e - i * n)) for n, e, i in zip(shape, full, index, strict=True)
        )
        return a if a[keep].shape == a.shape else np.ascontiguousarray(a[keep])

    return _chunk_files(array_dir), read


def _chunk_files(array_dir: Path) -> list[Path]:
    """The chunk files of one array: every file in it but its metadata and hidden or
    half-written files (missing chunks are fill values: nothing to decode)."""
    return sorted(
        f
        for f in array_dir.rglob("*")
        if f.is_file()
        and f.name != "zarr.json"
        and not f.name.startswith(".")
        and not f.name.endswith(".partial")
    )


def floor_case(
    inputs: Callable[[str], list[Path]],
    out_bytes: Callable[[str], int],
    *,
    reads: int = 1,
) -> Case:
    """A case that costs what the codecs alone cost for a size: the "floor" row.

    It reads and decodes every chunk of each zarr v3 array (or of every array in each
    group) that ``inputs(size)`` returns, ``reads`` times, with the array's own codec
    chain from its ``zarr.json``; then encodes ``out_bytes(size)`` bytes with cubepipe's
    default codec chain (:data:`DEFAULT_CODECS`), re-encoding the largest decoded chunks
    (decoded beforehand, untimed) cyclically until that many bytes are encoded.
    ``reads=0`` gives an encode-only floor (the inputs then only supply the data). Results are discarded (nothing is written). Both
    phases run on a thread pool with one thread per core (the codecs release the GIL);
    chunk files come from disk or the page cache, whichever holds them.

    Returns ``seconds`` (= ``decode_s + encode_s``; listing files and imports excluded),
    ``decode_s``, ``encode_s``, ``decode_gbps`` (decoded bytes / s, GB = 1e9 bytes) and
    ``encode_gbps`` (input bytes encoded / s).
    """

    def case(size: str, workdir: Path) -> dict[str, Any]:
        import numpy as np  # noqa: PLC0415

        threads = len(os.sched_getaffinity(0))
        jobs: list[tuple[Path, list[Any], str]] = []  # (chunk file, codecs, dtype)
        for path in inputs(size):
            found = False
            for array_dir, meta in _arrays(Path(path)):
                found = True
                codecs = _bytes_codecs(meta["codecs"], str(array_dir))
                dtype = meta["data_type"] if isinstance(meta["data_type"], str) else "uint8"
                jobs += [(f, codecs, dtype) for f in _chunk_files(array_dir)]
            if not found:
                raise ValueError(f"floor_case: no zarr v3 array at or under {path}")

        def decoded(job: tuple[Path, list[Any], str]) -> Any:
            buf: Any = job[0].read_bytes()
            for codec in reversed(job[1]):
                buf = codec.decode(buf)
            return buf

        def decode(job: tuple[Path, list[Any], str]) -> int:
            return memoryview(decoded(job)).nbytes

        # What is encoded: the largest chunk files (the main variable's), decoded untimed.
        kept: list[Any] = []
        for job in sorted(jobs, key=lambda j: -j[0].stat().st_size)[: 2 * threads]:
            try:
                kept.append(np.frombuffer(decoded(job), dtype=job[2]))
            except (TypeError, ValueError):  # a data type NumPy does not name
                kept.append(np.frombuffer(decoded(job), dtype="uint8"))
        total = int(out_bytes(size))
        if total and not kept:
            raise ValueError("floor_case: nothing to encode: the inputs have no chunk files")

        decoded_bytes = 0
        cpu0 = _cpu_s()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(reads):
                decoded_bytes += sum(pool.map(decode, jobs))
        decode_s = time.perf_counter() - t0

        pieces, left = [], total
        for chunk in itertools.cycle(kept) if total else ():
            if left <= 0:
                break
            n = min(chunk.size, max(1, left // chunk.itemsize))
            pieces.append(chunk[:n])
            left -= n * chunk.itemsize
        enc = _bytes_codecs(DEFAULT_CODECS, "cubepipe's default codec chain")

        def encode(piece: Any) -> int:
            buf: Any = piece
            for codec in enc:
                buf = codec.encode(buf)
            return memoryview(buf).nbytes

        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            encoded = sum(pool.map(encode, pieces))
        encode_s = time.perf_counter() - t0
        return {
            "seconds": decode_s + encode_s,
            "cpu_s": round(_cpu_s() - cpu0, 3),
            "decode_s": round(decode_s, 3),
            "encode_s": round(encode_s, 3),
            "decode_gbps": round(decoded_bytes / decode_s / 1e9, 3) if decode_s else None,
            "encode_gbps": round(total / encode_s / 1e9, 3) if encode_s else None,
            "decoded_bytes": decoded_bytes,
            "encoded_bytes": sum(memoryview(piece).nbytes for piece in pieces),
            "encoded_ratio": round(total / encoded, 3) if encoded else None,
            "threads": threads,
        }

    return case


def cube_bytes(path: Path, *, bands: int | None = None) -> int:
    """Decoded bytes of the largest array at or under ``path`` (a store's data variable);
    with ``bands``, of that many bands of it (first axis of its last three): the output of
    a command that writes ``bands`` components of the same (y, x) grid."""
    import numpy as np  # noqa: PLC0415

    best = 0
    for _, meta in _arrays(Path(path)):
        shape = meta["shape"]
        if bands is not None and len(shape) >= 3:
            shape = [*shape[:-3], bands, *shape[-2:]]
        n = int(np.prod(shape)) * np.dtype(meta["data_type"]).itemsize
        best = max(best, n)
    return best


def zarr_copy(arr: Any, out: Path) -> None:
    """The I/O floor: store a dask array into a new zarr v3 array with cubepipe's codec
    and the array's own chunks (what a plain dask zarr-to-zarr copy does)."""
    import dask.array as da  # noqa: PLC0415
    import zarr  # noqa: PLC0415

    from cubepipe.storage.store import default_compressors  # noqa: PLC0415

    z = zarr.create_array(
        str(out),
        shape=arr.shape,
        chunks=arr.chunksize,
        dtype=arr.dtype,
        compressors=default_compressors(),
    )
    da.store(arr, z, lock=False)


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in load)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def main(
    name: str,
    cases: dict[str, Case],
    *,
    baseline: str,
    sizes: tuple[str, ...],
    quick_size: str,
    notes: str = "",
    prepare: Callable[[str], None] | None = None,
    columns: tuple[str, ...] = (),
    summary: Callable[[list[dict[str, Any]]], str] | None = None,
    repeat: int = 3,
    floor: str | Mapping[str, str] | None = None,
) -> None:
    """Entry point of a benchmark script (see module docstring).

    ``columns`` are extra keys of the cases' results shown in the table (all are in the
    JSON); ``summary(rows)`` returns markdown printed and written after the table;
    ``repeat`` is the default of ``--repeat``. ``floor`` names a case (usually made by
    :func:`floor_case`) that always runs, like the baseline; every row then gets
    ``x_floor``, its seconds over the floor's seconds at the same size. Where cases do
    different work (one reads once, another twice and writes), ``floor`` maps each case
    to its own floor case instead (``{"compress": "floor_compress", ...}``); rows of cases
    not in the mapping get no ``x_floor``, a floor case's own row 1.
    """

    def floor_of(case: str) -> str | None:
        if floor is None or isinstance(floor, str):
            return floor
        return floor.get(case, case if case in floor.values() else None)

    ap = argparse.ArgumentParser(description=f"cubepipe benchmark: {name}")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--size", action="append", help=f"sizes to run (default {sizes})")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny size, once, every case in this process (times and memory not "
        "comparable), no result files",
    )
    ap.add_argument("--repeat", type=int, default=repeat, help="runs per case; the median is kept")
    ap.add_argument(
        "--case",
        action="append",
        choices=list(cases),
        help=f"cases to run (default: all; the baseline {baseline!r} always runs); with a "
        "subset no result files are written",
    )
    args = ap.parse_args()
    if args.child:
        _child(cases, args.child, args.size[0], args.workdir)
        return
    run_sizes = [quick_size] if args.quick else (args.size or list(sizes))
    repeat = 1 if args.quick else args.repeat
    load_start = os.getloadavg()
    print(f"load average at start {_load(load_start)} ({os.cpu_count()} CPUs)", flush=True)
    rows = []
    for size in run_sizes:
        if prepare is not None:
            prepare(size)  # inputs are made once, outside every timed case
        per_case: dict[str, dict[str, Any]] = {}
        # the baseline always runs; a chosen case's floor runs with it
        wanted = [*(args.case or cases), baseline]
        chosen = [c for c in cases if c in wanted or c in {floor_of(w) for w in wanted}]
        for case in chosen:
            runs = []
            for _ in range(repeat):
                workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
                try:
                    if args.quick:  # a smoke run: every case in this process, no new imports
                        runs.append(_measure(cases, case, size, workdir))
                    else:
                        runs.append(_run_child(sys.argv[0], case, size, workdir))
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
            runs.sort(key=lambda r: r["seconds"])
            per_case[case] = {**runs[len(runs) // 2], "runs": [r["seconds"] for r in runs]}
        base = per_case[baseline]["seconds"]
        for case, r in per_case.items():
            f = floor_of(case)
            floor_s = per_case[f]["seconds"] if f in per_case else None
            x_floor = {"x_floor": round(r["seconds"] / floor_s, 3)} if floor_s else {}
            rows.append(
                {
                    "size": size,
                    "case": case,
                    "seconds": round(r["seconds"], 3),
                    "ratio_to_" + baseline: round(r["seconds"] / base, 3),
                    **x_floor,
                    "peak_rss_mb": round(r["peak_rss_mb"], 1),
                    "peak_anon_mb": round(r["peak_anon_mb"], 1),
                    **{
                        k: v
                        for k, v in r.items()
                        if k not in ("seconds", "peak_rss_mb", "peak_anon_mb")
                    },
                }
            )
            of_floor = f"  x{x_floor['x_floor']:5.2f} of {floor_of(case)}" if x_floor else ""
            print(
                f"{size:>8} {case:<28} {r['seconds']:8.2f} s  x{r['seconds'] / base:5.2f} "
                f"of {baseline}{of_floor}  peak RSS {r['peak_rss_mb']:7.0f} MB "
                f"(anon {r['peak_anon_mb']:6.0f} MB)",
                flush=True,
            )
    load_end = os.getloadavg()
    print(f"load average at end {_load(load_end)}", flush=True)
    text = summary(rows) if summary is not None else ""
    if text:
        print(text, flush=True)
    if args.quick or args.case:
        return
    RESULTS.mkdir(exist_ok=True)
    meta = {
        **machine(),
        "load_start": [round(v, 2) for v in load_start],
        "load_end": [round(v, 2) for v in load_end],
    }
    if floor is not None:
        meta["floor_codecs"] = DEFAULT_CODECS
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": meta, "rows": rows}, indent=2))
    cols = ["size", "case", "seconds", "ratio_to_" + baseline]
    cols += ["x_floor"] if floor is not None else []
    cols += ["cpu_s", "peak_rss_mb", "peak_anon_mb", *columns]
    if floor is not None:
        cols += [c for c in ("decode_gbps", "encode_gbps") if c not in cols]
    cols = list(dict.fromkeys(cols))  # a script's columns may repeat ours
    lines = [
        f"# {name}",
        "",
        f"Machine: {meta['cpus']} CPUs, Python {meta['python']}, {meta['platform']}, "
        f"{meta['date']}; load average (1/5/15 min) {_load(load_start)} at start, "
        f"{_load(load_end)} at end. Median of {repeat} runs; each case in its own process. "
        "peak_rss_mb: the process's VmHWM (includes file pages it mapped); peak_anon_mb: "
        "peak anonymous memory (RssAnon sampled every 10 ms: arrays and heap only); cpu_s: "
        "user + system CPU seconds of the case's process and the subprocesses it waited for.",
        ""
        if floor is None
        else "\nx_floor: seconds / the seconds of "
        + (f"the {floor!r} row" if isinstance(floor, str) else "the case's floor row")
        + " (same size): reading and "
        "decoding every input chunk with its own codecs, then encoding the output's bytes "
        f"with cubepipe's default codecs ({_codec_tag(DEFAULT_CODECS)}), on "
        f"{len(os.sched_getaffinity(0))} threads, results discarded (GB = 1e9 bytes).",
        "",
        notes,
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    if text:
        lines += ["", text]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / (name + '.md')}")
