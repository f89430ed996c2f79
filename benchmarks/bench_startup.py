"""Start-up: how long a ``cubepipe`` process takes before it does any work (issue 19, item 5).

Every case times one whole new process (fork, exec, interpreter, imports, the command),
from this process: ``seconds`` (wall), ``cpu_s`` (its user + system CPU seconds, steadier
than wall time on a loaded machine) and ``peak_rss_mb`` (its peak RSS, from ``wait4``).
The cases run interleaved, round after round (A B C ... A B C ...), so that a change of
the machine's load touches every case alike; each figure is the median over the rounds.
Cases:

- ``python``: ``python -c pass``: the interpreter alone: the baseline;
- ``import_dask_array``, ``import_xarray``, ``import_libs`` (``dask.array, xarray,
  zarr``): what a command that reads or writes a store cannot avoid importing (dask.array
  imports xarray and pandas itself when they are installed);
- ``version``, ``help``: ``cubepipe --version`` / ``--help`` (goal: under 1 s);
  ``version_script``: the same through the installed console script;
- ``standardize_help``: ``cubepipe standardize --help`` (imports the command's module);
- ``standardize``, ``compress``: ``cubepipe -q standardize`` / ``compress -k 3`` of a store
  of ONE chunk (15 x 256 x 256 float32, made once): the whole run, so an upper bound of the
  time to the first chunk processed (goal: under 1.2 s);
- ``*_nosparse``: the same with ``sparse`` hidden (``sys.modules['sparse'] = None``), as
  in an install without the ``bench`` extra: ``dask.array`` imports ``sparse`` (and so
  numba) whenever it is installed, to register its chunk type, and the ``bench`` extra's
  dask-ml -> dask-glm brings it in;
- ``prev_*`` (only with ``CUBEPIPE_BENCH_PREVIOUS=<git ref>``): the same commands run by
  the cubepipe of that commit (``git archive`` of ``pipeline/`` and ``storage/`` put
  first on ``PYTHONPATH``), for the before/after table.

The ``cubepipe`` cases run ``python -c "from cubepipe.pipeline.cli import run; run()"``
(what the console script does), so that the previous commit runs the same way.

``ru_maxrss`` of a child starts from the peak of the process that spawned it (this
benchmark, ``spawner_rss_mb``, small until ``prepare`` imports cubepipe: so the cases are
spawned by a fresh helper process): ``peak_rss_mb`` is exact where it exceeds that.

Run ``python benchmarks/bench_startup.py`` (``--repeat 9`` for steadier medians;
``CUBEPIPE_BENCH_PREVIOUS=ba8c93c`` adds the rows of the commit before lazy start-up;
``--quick`` for a smoke run of fewer cases). The goal rows are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import INPUTS, RESULTS, machine

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"quick": (15, 64, 64), "small": (15, 256, 256)}  # one chunk each
PREVIOUS = os.environ.get("CUBEPIPE_BENCH_PREVIOUS", "")
RUN = "import sys; from cubepipe.pipeline.cli import run; sys.argv[0] = 'cubepipe'; run()"
NOSPARSE = "import sys; sys.modules['sparse'] = None; "
GOAL_HELP_S = 1.0
GOAL_FIRST_CHUNK_S = 1.2


def _input(size: str) -> Path:
    return INPUTS / f"startup-{size}.zarr"


def prepare(size: str) -> None:
    from cubepipe.pipeline.synthetic import make_cube  # noqa: PLC0415
    from cubepipe.storage import store_state, write_cube  # noqa: PLC0415

    if store_state(_input(size)) != "complete":
        write_cube(make_cube(SHAPES[size], seed=0), _input(size), overwrite=True)
    if PREVIOUS:
        _previous_tree()


def _previous_tree() -> Path:
    """``pipeline/`` and ``storage/`` of commit :data:`PREVIOUS`, as ``cubepipe.*``."""
    top = Path(tempfile.gettempdir()) / f"cubepipe-bench-startup-{PREVIOUS}"
    if not (top / "cubepipe" / "pipeline").is_dir():
        shutil.rmtree(top, ignore_errors=True)
        (top / "cubepipe").mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", PREVIOUS, "pipeline", "storage"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(top / "cubepipe")], input=archive, check=True)
    return top


def _timed(argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``argv`` as a new process: its wall and CPU seconds and peak RSS."""
    err = workdir / "stderr.txt"
    with err.open("w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=fh, cwd=workdir, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv} failed ({proc.returncode}): {err.read_text()[-2000:]}")
    return {
        "seconds": seconds,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def _python(code: str, size: str, workdir: Path) -> dict[str, Any]:
    return _timed([sys.executable, "-c", code], workdir)


def _args(cmd: str, size: str, workdir: Path) -> list[str]:
    if cmd in ("standardize", "compress"):
        extra = ["-k", "3"] if cmd == "compress" else []
        return ["-q", cmd, str(_input(size)), "-o", str(workdir / "out.zarr"), *extra]
    return cmd.split()


def _cubepipe(
    cmd: str, size: str, workdir: Path, *, prefix: str = "", previous: bool = False
) -> dict[str, Any]:
    env = None
    if previous:
        env = {**os.environ, "PYTHONPATH": str(_previous_tree())}
    argv = [sys.executable, "-c", prefix + RUN, *_args(cmd, size, workdir)]
    return _timed(argv, workdir, env)


def _script(size: str, workdir: Path) -> dict[str, Any]:
    return _timed([str(Path(sys.executable).parent / "cubepipe"), "--version"], workdir)


COMMANDS = {
    "version": "--version",
    "help": "--help",
    "standardize_help": "standardize --help",
    "standardize": "standardize",
    "compress": "compress",
}

CASES: dict[str, Any] = {
    "python": partial(_python, "pass"),
    "import_dask_array": partial(_python, "import dask.array"),
    "import_xarray": partial(_python, "import xarray"),
    "import_libs": partial(_python, "import dask.array, xarray, zarr"),
    "import_libs_nosparse": partial(_python, NOSPARSE + "import dask.array, xarray, zarr"),
    "version_script": _script,
    **{name: partial(_cubepipe, cmd) for name, cmd in COMMANDS.items()},
    "standardize_nosparse": partial(_cubepipe, "standardize", prefix=NOSPARSE),
    "compress_nosparse": partial(_cubepipe, "compress", prefix=NOSPARSE),
}
if "--quick" in sys.argv:  # the smoke run: one case per kind of process
    for name in ("import_dask_array", "import_xarray", "import_libs_nosparse", "compress"):
        del CASES[name]
    CASES.pop("compress_nosparse")
if PREVIOUS:
    CASES |= {f"prev_{n}": partial(_cubepipe, c, previous=True) for n, c in COMMANDS.items()}


def summary(rows: list[dict[str, Any]]) -> str:
    s = {r["case"]: r["seconds"] for r in rows}
    cpu = {r["case"]: r["cpu_s"] for r in rows}
    lines = [
        "Goals (issue 19, item 5; medians of whole processes: wall seconds, and CPU seconds "
        "in brackets; on a loaded machine judge by the CPU seconds):",
        "",
    ]

    def goal(case: str, what: str, limit: float) -> None:
        if case in s:
            met = "met" if s[case] < limit else "NOT met"
            line = f"- {what}: {s[case]:.2f} s [{cpu[case]:.2f}] (goal < {limit:g} s: {met})"
            if f"prev_{case}" in s:
                line += f"; {PREVIOUS}: {s[f'prev_{case}']:.2f} s [{cpu[f'prev_{case}']:.2f}]"
            lines.append(line)

    goal("version", "`cubepipe --version`", GOAL_HELP_S)
    goal("help", "`cubepipe --help`", GOAL_HELP_S)
    goal("standardize_help", "`cubepipe standardize --help`", GOAL_HELP_S)
    for cmd in ("standardize", "compress"):
        goal(cmd, f"`cubepipe {cmd}` to its first chunk (whole run, one chunk)", GOAL_FIRST_CHUNK_S)
        goal(f"{cmd}_nosparse", "the same without sparse (no `bench` extra)", GOAL_FIRST_CHUNK_S)
    if "import_libs" in s and "standardize" in s:
        lines.append(
            f"- of which importing dask.array, xarray and zarr alone: {s['import_libs']:.2f} s "
            f"[{cpu['import_libs']:.2f}] ({s.get('import_libs_nosparse', float('nan')):.2f} s "
            f"without sparse): cubepipe's own share of standardize is "
            f"{s['standardize'] - s['import_libs']:.2f} s "
            f"[{cpu['standardize'] - cpu['import_libs']:.2f}]"
        )
    return "\n".join(lines)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _spawn(args: argparse.Namespace, names: list[str], size: str) -> list[dict[str, Any]]:
    """Every case ``repeat`` times, interleaved; one row per case (medians)."""
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for _ in range(args.repeat):
        for name in names:
            workdir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
            try:
                runs[name].append(CASES[name](size, workdir))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    with open("/proc/self/status") as fh:
        spawner = next(int(x.split()[1]) for x in fh if x.startswith("VmHWM:")) / 1024
    rows = []
    for name, rs in runs.items():
        rows.append(
            {
                "size": size,
                "case": name,
                "seconds": round(_median([r["seconds"] for r in rs]), 3),
                "cpu_s": round(_median([r["cpu_s"] for r in rs]), 3),
                "peak_rss_mb": round(_median([r["peak_rss_mb"] for r in rs]), 1),
                "spawner_rss_mb": round(spawner, 1),
                "runs": [round(r["seconds"], 3) for r in rs],
            }
        )
    return rows


def run(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="cubepipe benchmark: start-up")
    ap.add_argument("--quick", action="store_true", help="smoke run: once, no result files")
    ap.add_argument("--repeat", type=int, default=7, help="rounds; medians are kept")
    ap.add_argument("--case", action="append", choices=list(CASES), help="cases (default all)")
    ap.add_argument("--spawn", help=argparse.SUPPRESS)  # the helper that runs the cases
    args = ap.parse_args(argv)
    size = "quick" if args.quick else "small"
    names = [n for n in CASES if n in (args.case or CASES) or n == "python"]
    if args.quick:
        args.repeat = 1
    if args.spawn:  # the fresh helper: runs the cases, prints the rows as JSON
        print("ROWS " + json.dumps(_spawn(args, names, size)), flush=True)
        return
    prepare(size)
    load_start = os.getloadavg()
    print(f"load average at start {_load(load_start)} ({os.cpu_count()} CPUs)", flush=True)
    helper = subprocess.run(
        [sys.executable, __file__, "--spawn", "1", *(argv if argv is not None else sys.argv[1:])],
        capture_output=True,
        text=True,
        check=False,
    )
    if helper.returncode:
        raise SystemExit(helper.stdout + helper.stderr)
    line = next(x for x in helper.stdout.splitlines() if x.startswith("ROWS "))
    rows: list[dict[str, Any]] = json.loads(line.removeprefix("ROWS "))
    load_end = os.getloadavg()
    base = next(r for r in rows if r["case"] == "python")
    for r in rows:
        r["ratio_to_python"] = round(r["seconds"] / base["seconds"], 2)
        print(
            f"{size:>8} {r['case']:<24} {r['seconds']:7.2f} s  x{r['ratio_to_python']:5.2f} of "
            f"python  cpu {r['cpu_s']:6.2f} s  peak RSS {r['peak_rss_mb']:6.0f} MB",
            flush=True,
        )
    print(f"load average at end {_load(load_end)}", flush=True)
    text = summary(rows)
    print(text, flush=True)
    if args.quick or args.case:
        return
    meta = {
        **machine(),
        "load_start": [round(v, 2) for v in load_start],
        "load_end": [round(v, 2) for v in load_end],
        "repeat": args.repeat,
        "previous": PREVIOUS or None,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_startup.json").write_text(
        json.dumps({"machine": meta, "rows": rows}, indent=2)
    )
    cols = ["case", "seconds", "ratio_to_python", "cpu_s", "peak_rss_mb", "spawner_rss_mb"]
    lines = [
        "# bench_startup",
        "",
        f"Machine: {meta['cpus']} CPUs, Python {meta['python']}, {meta['platform']}, "
        f"{meta['date']}; load average (1/5/15 min) {_load(load_start)} at start, "
        f"{_load(load_end)} at end. Medians of {args.repeat} interleaved rounds "
        f"(store: {'x'.join(map(str, SHAPES[size]))} float32, one chunk). Re-run: "
        f"`{'CUBEPIPE_BENCH_PREVIOUS=' + PREVIOUS + ' ' if PREVIOUS else ''}"
        f"python benchmarks/bench_startup.py --repeat {args.repeat}`.",
        "",
        __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows),
        "",
        text,
    ]
    (RESULTS / "bench_startup.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'bench_startup.md'}")


def _load(load: tuple[float, ...]) -> str:
    return "/".join(f"{v:.2f}" for v in load)


if __name__ == "__main__":
    run()
