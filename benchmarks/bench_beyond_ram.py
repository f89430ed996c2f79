"""A cube larger than this machine's memory, standardized and compressed from a cold cache
(issue 19, build item 8).

The script builds two synthetic cubes with cubepipe's default chunks and codec
(``make_cube(..., seed=0)``: signed float32, NaN disc; written chunk by chunk by
``write_cube`` through dask, in a separate process, never whole in memory, untimed):

- ``big``: ``--size-gb`` decoded GB (default: 1.25 x MemTotal), ``--bands`` bands (15),
  square;
- ``1x``: 15 x 2500 x 2500 (``--ref-shape``), the figure the big cube is held to.

Then, for each cube, the real command lines, each in a subprocess (``.venv/bin/cubepipe
--quiet``), every run from a cold page cache:

- ``standardize``: ``cubepipe standardize IN -o OUT`` (fit the statistics: one read;
  apply: a second read; one write of the whole cube);
- ``compress``: ``cubepipe compress IN -o OUT -k 5`` (PCA fit, then the 5 scores and the
  error metrics).

Cold cache: before every run (after deleting the previous output), ``sync`` and
``echo 3 > /proc/sys/vm/drop_caches`` when this process may (root, writable /proc/sys);
otherwise (or with ``--cache fadvise``) every file of the input store is evicted with
``posix_fadvise(DONTNEED)``, and the reason is printed. ``--cache none`` leaves the
cache alone (the smoke test). Dropping the whole page cache also slows whatever else runs
on the machine for a moment: run it on a quiet machine.

Reported per run: wall seconds, seconds per decoded GB (GB = 1e9 bytes of float32
values), that figure over the 1x cube's (median of ``--ref-repeat`` runs), CPU seconds of
the command (user + system), the command's peak RSS (``VmHWM`` of its process) and peak
anonymous memory, sampled every 50 ms by ``_memory.run_sampled``. Goals: the big cube's
seconds per GB within 10 % of the 1x figure, peak RSS under 600 MiB.

Disk: the input and the largest output (standardize's, about the input's size) must fit,
plus the 1x cube and its outputs; the script checks the free space first and refuses
with the numbers if it is short. Everything it made is deleted at the end, also on
failure or SIGTERM. Results go to ``benchmarks/results/bench_beyond_ram.{md,json}`` when
the cube is larger than memory (or to ``--results-dir``); a smaller cube (``--size-gb
2``: a check that the mode works) writes no result files unless ``--results-dir`` is
given.

Run (on a quiet machine, as root; about 30 GB of input and 30 GB of output; tens of
minutes on 2 cores): ``.venv/bin/python benchmarks/bench_beyond_ram.py``. Not part of
``make test``; tests/test_benchmarks.py runs it at a tiny size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_CODECS, RESULTS, _codec_tag, machine
from _memory import run_sampled

NAME = "bench_beyond_ram"
REF_SHAPE = (15, 2500, 2500)
K = 5
COMMANDS = {
    "standardize": ["standardize"],
    "compress": ["compress", "-k", str(K)],
}
TIME_GOAL = 1.10  # big cube's s/GB over the 1x cube's
RSS_GOAL_MB = 600.0  # MiB, as the other tables
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def mem_total_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def big_shape(size_gb: float, bands: int) -> tuple[int, int, int]:
    """A square (bands, n, n) float32 cube of about ``size_gb`` decoded GB (n >= 8)."""
    n = max(8, round(math.sqrt(size_gb * 1e9 / (bands * 4))))
    return bands, n, n


def decoded_gb(shape: tuple[int, ...]) -> float:
    return math.prod(shape) * 4 / 1e9


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- building the cubes (in a child process: the parent stays small) ----------------------


def make_cube_stores(specs: list[str]) -> None:
    """Write each ``PATH=B,Y,X`` synthetic cube chunk by chunk (dask streams it; never
    whole in memory) and print the seconds each took."""
    from cubepipe.pipeline.synthetic import make_cube  # noqa: PLC0415
    from cubepipe.storage import write_cube  # noqa: PLC0415

    for spec in specs:
        path, shape = spec.rsplit("=", 1)
        t0 = time.perf_counter()
        cube = make_cube(tuple(int(v) for v in shape.split(",")), seed=0)  # type: ignore[arg-type]
        write_cube(cube, path, op="bench-input", overwrite=True)
        print(f"BUILD-SECONDS {time.perf_counter() - t0}", flush=True)


def build(cubes: dict[str, tuple[Path, tuple[int, int, int]]]) -> list[float]:
    """Build the cubes in one child process (the parent stays small); their seconds."""
    specs = [f"{path}={','.join(map(str, shape))}" for path, shape in cubes.values()]
    out = subprocess.run(
        [sys.executable, __file__, "--make-cubes", *specs],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return [float(line.split()[1]) for line in out.splitlines() if line.startswith("BUILD-")]


def startup_s(cli: Path, repeat: int) -> float:
    """Median wall seconds of ``cubepipe --version`` (warm cache): the start-up every run
    pays, which weighs more on the small cube's seconds per GB."""
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        subprocess.run([str(cli), "--version"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


# -- cold cache ---------------------------------------------------------------------------


def cache_method(asked: str) -> tuple[str, str]:
    """(method, why): ``drop`` when asked (default) and permitted, else ``fadvise``."""
    if asked != "drop":
        return asked, f"--cache {asked}"
    if os.geteuid() != 0:
        return "fadvise", "not root: cannot write /proc/sys/vm/drop_caches"
    try:
        os.sync()
        DROP_CACHES.write_text("3\n")
    except OSError as e:
        return "fadvise", f"writing {DROP_CACHES} failed ({e.strerror or e})"
    return "drop", "root, /proc/sys/vm/drop_caches writable"


def evict(method: str, store: Path) -> None:
    if method == "none":
        return
    os.sync()
    if method == "drop":
        DROP_CACHES.write_text("3\n")
        return
    for f in store.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# -- one run ------------------------------------------------------------------------------


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_command(cli: Path, command: str, src: Path, out: Path, method: str) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    evict(method, src)
    load = os.getloadavg()[0]
    cpu0 = _children_cpu_s()
    argv = [str(cli), "--quiet", *COMMANDS[command][:1], str(src), "-o", str(out)]
    argv += COMMANDS[command][1:]
    res = run_sampled(argv, cwd=out.parent, timeout=6 * 3600)
    cpu = _children_cpu_s() - cpu0
    if res.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}:\n{res.stderr[-3000:]}")
    out_gb = dir_bytes(out) / 1e9
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": round(res.seconds, 3),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(res.main_peak_mb, 1),
        "peak_anon_mb": round(res.main_peak_anon_mb, 1),
        "tree_peak_mb": round(res.tree_peak_mb, 1),
        "out_gb_on_disk": round(out_gb, 3),
        "load_1min_before": round(load, 2),
    }


# -- the benchmark ------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=f"cubepipe benchmark: {NAME} (issue 19 item 8)")
    ap.add_argument("--make-cubes", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: --size-gb 0.01 --ref-shape 15,64,64 --ref-repeat 1 --cache none, "
        "no result files unless --results-dir",
    )
    ap.add_argument(
        "--size-gb",
        type=float,
        help="decoded size of the big cube in GB (default: 1.25 x MemTotal)",
    )
    ap.add_argument("--bands", type=int, default=15, help="bands of the big cube (default 15)")
    ap.add_argument(
        "--ref-shape",
        default=",".join(map(str, REF_SHAPE)),
        help="band,y,x of the reference cube (default 15,2500,2500: the 1x cube)",
    )
    ap.add_argument(
        "--ref-repeat", type=int, default=3, help="runs per command on the 1x cube (median)"
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="runs per command on the big cube (median)"
    )
    ap.add_argument(
        "--cache",
        choices=("drop", "fadvise", "none"),
        default="drop",
        help="cold cache before each run: drop the page cache (root), evict the input's "
        "files (posix_fadvise DONTNEED), or nothing (default: drop, else fadvise)",
    )
    ap.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the cubes and outputs are made (a new folder, deleted at the end)",
    )
    ap.add_argument(
        "--results-dir",
        type=Path,
        help="write the tables here (default: benchmarks/results when the cube is larger "
        "than memory, else nowhere)",
    )
    ap.add_argument(
        "--command",
        action="append",
        choices=list(COMMANDS),
        help="commands to run (default: all)",
    )
    return ap.parse_args(argv)


def check_disk(where: Path, need: int, ratio: float = 0.5) -> None:
    """Refuse (exit with the numbers) unless ``need`` bytes are free in ``where``."""
    free = shutil.disk_usage(where).free
    if free < need:
        raise SystemExit(
            f"{NAME}: not enough disk space in {where}: {free / 1e9:.1f} GB free, "
            f"{need / 1e9:.1f} GB needed (each cube and standardize's output, at "
            f"{ratio:.2f} of the decoded size on disk, +10 %, 1 GB to spare). Free some "
            "space, pass --dir on a larger file system, or a smaller --size-gb."
        )


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.make_cubes:
        make_cube_stores(args.make_cubes)
        return
    if args.quick:
        args.size_gb, args.ref_shape, args.ref_repeat, args.repeat = 0.01, "15,64,64", 1, 1
        args.cache = "none"
    mem = mem_total_bytes()
    size_gb = args.size_gb if args.size_gb is not None else 1.25 * mem / 1e9
    big = big_shape(size_gb, args.bands)
    ref = tuple(int(v) for v in args.ref_shape.split(","))
    if len(ref) != 3:
        raise SystemExit(f"--ref-shape wants band,y,x; got {args.ref_shape!r}")
    beyond = decoded_gb(big) * 1e9 > mem
    results_dir = args.results_dir or (RESULTS if beyond else None)
    commands = args.command or list(COMMANDS)
    cli = Path(sys.executable).with_name("cubepipe")
    if not cli.exists():
        raise SystemExit(f"{NAME}: no cubepipe command beside {sys.executable}")

    # Disk: each cube and standardize's output (float32, about the same size on disk),
    # +10 %, 1 GB to spare. Checked first with the big cube at half its decoded size (no
    # codec shrinks these floats more), then, before the big cube is built, at the 1x
    # cube's measured on-disk ratio, which the big cube (same generator) shares.
    args.dir.mkdir(parents=True, exist_ok=True)
    check_disk(
        args.dir, int(2 * decoded_gb(ref) * 1e9 * 1.1 + 1e9 + 2 * 0.5 * decoded_gb(big) * 1e9)
    )
    method, why = cache_method(args.cache)
    print(
        f"{NAME}: big cube {big} = {decoded_gb(big):.2f} GB decoded "
        f"({decoded_gb(big) * 1e9 / mem:.2f} x MemTotal {mem / 2**30:.1f} GiB); reference "
        f"{ref} = {decoded_gb(ref):.3f} GB; codec {_codec_tag(DEFAULT_CODECS)}; cold cache: "
        f"{method} ({why}); load {os.getloadavg()}",
        flush=True,
    )

    work = Path(tempfile.mkdtemp(prefix=f"{NAME}-", dir=args.dir))

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(f"{NAME}: stopped by signal {signum}")

    old = signal.signal(signal.SIGTERM, on_term)
    load_start = os.getloadavg()
    try:
        cubes: dict[str, dict[str, Any]] = {}
        for label, shape in (("1x", ref), ("big", big)):
            path = work / f"{label}.zarr"
            if label == "big":
                ratio = cubes["1x"]["gb_on_disk"] / cubes["1x"]["gb"]
                # the big cube, its output and the 1x cube's output (the 1x cube is built)
                need = 1.1 * ratio * (2 * decoded_gb(big) + decoded_gb(ref)) * 1e9 + 1e9
                check_disk(args.dir, int(need), ratio)
            (build_s,) = build({label: (path, shape)})  # type: ignore[dict-item]
            cubes[label] = {
                "shape": list(shape),
                "path": path,
                "gb": round(decoded_gb(shape), 4),
                "gb_on_disk": round(dir_bytes(path) / 1e9, 4),
                "build_s": round(build_s, 1),
            }
            print(
                f"built {label} {shape}: {cubes[label]['gb_on_disk']:.3f} GB on disk in "
                f"{build_s:.0f} s",
                flush=True,
            )
        if beyond and cubes["big"]["gb_on_disk"] * 1e9 < mem:
            print(
                f"note: the big cube takes {cubes['big']['gb_on_disk']:.1f} GB on disk, less "
                f"than MemTotal ({mem / 1e9:.1f} GB): the page cache could hold much of it; "
                "pass a larger --size-gb to be sure",
                flush=True,
            )
        start = startup_s(cli, args.ref_repeat)
        print(f"start-up (cubepipe --version, warm): {start:.2f} s", flush=True)
        rows: list[dict[str, Any]] = []
        for command in commands:
            for label, repeat in (("1x", args.ref_repeat), ("big", args.repeat)):
                cube = cubes[label]
                runs = []
                for _ in range(max(1, repeat)):
                    r = run_command(cli, command, cube["path"], work / "out.zarr", method)
                    runs.append(r)
                runs.sort(key=lambda r: r["seconds"])
                med = runs[len(runs) // 2]
                s_per_gb = med["seconds"] / cube["gb"]
                ref_s_per_gb = s_per_gb if label == "1x" else rows[-1]["s_per_gb"]
                print(
                    f"{label:>4} {command:<12} {med['seconds']:8.2f} s "
                    f"({s_per_gb:7.2f} s/GB, x{s_per_gb / ref_s_per_gb:5.2f} of 1x; CPU "
                    f"{med['cpu_s']:.1f} s) peak RSS {med['peak_rss_mb']:.0f} MiB (anon "
                    f"{med['peak_anon_mb']:.0f}) load {med['load_1min_before']}",
                    flush=True,
                )
                rows.append(
                    {
                        "cube": label,
                        "shape": "x".join(map(str, cube["shape"])),
                        "gb": cube["gb"],
                        "gb_on_disk": cube["gb_on_disk"],
                        "command": command,
                        **med,
                        "s_per_gb": round(s_per_gb, 3),
                        "x_1x_s_per_gb": round(s_per_gb / ref_s_per_gb, 3),
                        "s_per_gb_net": round(max(0.0, med["seconds"] - start) / cube["gb"], 3),
                        "cpu_s_per_gb": round(med["cpu_s"] / cube["gb"], 3),
                        "runs": [r["seconds"] for r in runs],
                        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
                    }
                )
        load_end = os.getloadavg()
        summary = goals(rows)
        print("\n".join(summary), flush=True)
        if results_dir is not None:
            write_results(
                results_dir, rows, summary, cubes, method, why, load_start, load_end, mem, start
            )
    finally:
        signal.signal(signal.SIGTERM, old)
        # a command or cube builder still running (stopped by a signal): end it first
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        shutil.rmtree(work, ignore_errors=True)
        print(f"deleted {work}", flush=True)


def goals(rows: list[dict[str, Any]]) -> list[str]:
    by = {(r["cube"], r["command"]): r for r in rows}
    lines = [
        "| command | 1x s/GB | big s/GB | big / 1x | within "
        f"{TIME_GOAL:.2f}x | big / 1x without start-up | cpu s/GB 1x / big | peak RSS MiB "
        f"(1x / big) | under {RSS_GOAL_MB:.0f} MiB |",
        "|" + "---|" * 9,
    ]
    for command in dict.fromkeys(r["command"] for r in rows):
        one, big = by.get(("1x", command)), by.get(("big", command))
        if one is None or big is None:
            continue
        ratio = big["s_per_gb"] / one["s_per_gb"]
        net = big["s_per_gb_net"] / one["s_per_gb_net"] if one["s_per_gb_net"] else float("nan")
        peak = max(one["peak_rss_mb_max"], big["peak_rss_mb_max"])
        lines.append(
            f"| {command} | {one['s_per_gb']} | {big['s_per_gb']} | {ratio:.2f} | "
            f"{'yes' if ratio <= TIME_GOAL else '**no**'} | {net:.2f} | {one['cpu_s_per_gb']} / "
            f"{big['cpu_s_per_gb']} | {one['peak_rss_mb_max']} / {big['peak_rss_mb_max']} | "
            f"{'yes' if peak < RSS_GOAL_MB else '**no**'} |"
        )
    return lines


def write_results(
    where: Path,
    rows: list[dict[str, Any]],
    summary: list[str],
    cubes: dict[str, dict[str, Any]],
    method: str,
    why: str,
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
    mem: int,
    start: float,
) -> None:
    where.mkdir(parents=True, exist_ok=True)
    meta = {
        **machine(),
        "mem_total_gib": round(mem / 2**30, 2),
        "load_start": [round(v, 2) for v in load_start],
        "load_end": [round(v, 2) for v in load_end],
        "cold_cache": method,
        "cold_cache_why": why,
        "startup_s": round(start, 3),
        "codecs": DEFAULT_CODECS,
        "cubes": {
            k: {kk: str(vv) if kk == "path" else vv for kk, vv in v.items()}
            for k, v in cubes.items()
        },  # fmt: skip
    }
    (where / f"{NAME}.json").write_text(json.dumps({"machine": meta, "rows": rows}, indent=2))
    cols = ["cube", "shape", "gb", "gb_on_disk", "command", "seconds", "s_per_gb"]
    cols += ["x_1x_s_per_gb", "s_per_gb_net"]
    cols += ["cpu_s", "cpu_s_per_gb", "peak_rss_mb", "peak_anon_mb", "runs", "load_1min_before"]
    big = cubes["big"]
    lines = [
        f"# {NAME}",
        "",
        f"Machine: {meta['cpus']} CPUs, {meta['mem_total_gib']} GiB MemTotal, Python "
        f"{meta['python']}, {meta['platform']}, {meta['date']}; load average (1/5/15 min) "
        f"{'/'.join(map(str, meta['load_start']))} at start, "
        f"{'/'.join(map(str, meta['load_end']))} at end.",
        "",
        f"Big cube {big['shape']} float32: {big['gb']} GB decoded "
        f"({big['gb'] * 1e9 / mem:.2f} x MemTotal), {big['gb_on_disk']} GB on disk "
        f"(codec {_codec_tag(DEFAULT_CODECS)}, cubepipe's default chunks), built in "
        f"{big['build_s']} s (untimed). Reference: the 1x cube {cubes['1x']['shape']}. Each "
        f"run is `cubepipe --quiet COMMAND IN -o OUT` in a subprocess from a cold page cache "
        f"({method}: {why}); seconds are wall time of the whole process (start-up "
        "included), s_per_gb per decoded GB (1e9 bytes); peak_rss_mb: VmHWM of the command's "
        "process in MiB, peak_anon_mb: its peak anonymous memory (sampled every 50 ms); "
        "cpu_s: user + system CPU seconds of the command. s_per_gb_net: seconds less the "
        f"start-up ({start:.2f} s: median of `cubepipe --version`, warm, same run) per GB; "
        "start-up weighs on the 1x cube's seconds per GB, not on the big cube's.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    lines += ["", "## Goals (issue 19 item 8)", "", *summary]
    (where / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {where / (NAME + '.md')}", flush=True)


if __name__ == "__main__":
    main()
