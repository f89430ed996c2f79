"""Shared benchmark plumbing: run each case in its own process, time it, read its peak RSS,
and write the result table (markdown + JSON) under benchmarks/results/.

A benchmark script defines ``CASES = {name: function(size, workdir) -> dict}`` and calls
:func:`main`. Every case runs in a fresh child process that reports its own peak resident
memory (``VmHWM``); the parent reports ratios to a baseline. ``--quick`` (the test suite's
smoke run) runs every case once in the parent instead: it checks that the cases work, not
how fast or small they are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
#: Inputs shared by the cases of one size (made once by ``prepare``).
INPUTS = Path(tempfile.gettempdir()) / "cubepipe-bench-inputs"

Case = Callable[[str, Path], dict[str, Any]]


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


def _measure(cases: dict[str, Case], case: str, size: str, workdir: Path) -> dict[str, Any]:
    sampler = _AnonSampler()
    sampler.start()
    t0 = time.perf_counter()
    extra = cases[case](size, workdir) or {}
    seconds = time.perf_counter() - t0
    anon = sampler.stop()
    return {"seconds": seconds, "peak_rss_mb": _vm_hwm_mb(), "peak_anon_mb": anon, **extra}


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
) -> None:
    """Entry point of a benchmark script (see module docstring).

    ``columns`` are extra keys of the cases' results shown in the table (all are in the
    JSON); ``summary(rows)`` returns markdown printed and written after the table;
    ``repeat`` is the default of ``--repeat``.
    """
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
    rows = []
    for size in run_sizes:
        if prepare is not None:
            prepare(size)  # inputs are made once, outside every timed case
        per_case: dict[str, dict[str, Any]] = {}
        chosen = [c for c in cases if not args.case or c in args.case or c == baseline]
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
            rows.append(
                {
                    "size": size,
                    "case": case,
                    "seconds": round(r["seconds"], 3),
                    "ratio_to_" + baseline: round(r["seconds"] / base, 3),
                    "peak_rss_mb": round(r["peak_rss_mb"], 1),
                    "peak_anon_mb": round(r["peak_anon_mb"], 1),
                    **{
                        k: v
                        for k, v in r.items()
                        if k not in ("seconds", "peak_rss_mb", "peak_anon_mb")
                    },
                }
            )
            print(
                f"{size:>8} {case:<28} {r['seconds']:8.2f} s  x{r['seconds'] / base:5.2f} "
                f"of {baseline}  peak RSS {r['peak_rss_mb']:7.0f} MB "
                f"(anon {r['peak_anon_mb']:6.0f} MB)",
                flush=True,
            )
    text = summary(rows) if summary is not None else ""
    if text:
        print(text, flush=True)
    if args.quick or args.case:
        return
    RESULTS.mkdir(exist_ok=True)
    meta = machine()
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": meta, "rows": rows}, indent=2))
    cols = ["size", "case", "seconds", "ratio_to_" + baseline, "peak_rss_mb", "peak_anon_mb"]
    cols += list(columns)
    lines = [
        f"# {name}",
        "",
        f"Machine: {meta['cpus']} CPUs, Python {meta['python']}, {meta['platform']}, "
        f"{meta['date']}. Median of {repeat} runs; each case in its own process. "
        "peak_rss_mb: the process's VmHWM (includes file pages it mapped); peak_anon_mb: "
        "peak anonymous memory (RssAnon sampled every 10 ms: arrays and heap only).",
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
