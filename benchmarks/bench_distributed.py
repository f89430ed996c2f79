"""``--scheduler local --workers 2`` (a dask.distributed LocalCluster on this machine)
against the threaded scheduler, for standardize and compress (issue 19, build item 6).

Cases (each in its own process, reading the same input store):
- ``threads_standardize`` (baseline), ``local_standardize``: what ``cubepipe
  [--scheduler local --workers 2] standardize IN -o OUT`` runs (fit, then apply + write);
- ``threads_compress``, ``local_compress``: what ``cubepipe [...] compress IN -o OUT -k 5``
  runs (co-moment fit, then project + metrics + write);
- ``local_standardize_dashboard``: ``local_standardize`` without ``--quiet``: the
  dashboard is started and its link printed (what a user gets by default);
- ``local_start``: the cluster alone: start two workers, run one task, close;
- ``floor_standardize`` / ``floor_compress``: the codec floor of each (every input chunk
  decoded twice, the output's bytes encoded once; benchmarks/_common.py).

The cluster cases time what a user waits for: the cluster's start (``startup_s``, also a
row of its own), the fit (``fit_s``) and the apply pass (``apply_s``). ``tasks`` counts
the tasks the scheduler ran, ``transfers``/``transfer_mb`` what workers fetched from each
other (the workers' ``transfer_incoming_log``: data a worker did not read itself).
``cpu_s`` includes the workers' CPU (they are this process's children). The local cases
run quiet (no dashboard, as ``--quiet``: its link would not be printed) except
``local_standardize_dashboard``.

Sizes: ``1x`` = 15 x 2500 x 2500 float32 (357 MiB), ``4x`` = 15 x 5000 x 5000.
Run ``python benchmarks/bench_distributed.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dask.callbacks import Callback

from cubepipe.pipeline.compression.api import prepare_compress
from cubepipe.pipeline.scheduling import keep_between_passes, scheduler
from cubepipe.pipeline.stats.standardize import standardize
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import open_cube, store_state, write_cube

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import INPUTS, cube_bytes, floor_case, main

warnings.filterwarnings("ignore", message="Consolidated metadata")

SIZES = {"tiny": (15, 300, 300), "1x": (15, 2500, 2500), "4x": (15, 5000, 5000)}
K = 5
WORKERS = 2
GOAL = 1.3


def _input(size: str) -> Path:
    return INPUTS / f"standardize-{size}.zarr"


def prepare(size: str) -> None:
    if store_state(_input(size)) != "complete":
        INPUTS.mkdir(parents=True, exist_ok=True)
        write_cube(make_cube(SIZES[size], seed=0), _input(size), op="bench-input", overwrite=True)


class _Count(Callback):
    """Tasks run by dask's local (threaded) scheduler."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks = 0

    def _posttask(self, *args: Any) -> None:
        self.tasks += 1


def _worker_counts(dask_worker: Any = None) -> tuple[int, int, int]:
    """(tasks executed, transfers fetched, bytes fetched) by a worker so far (its own
    counters: no scheduler plugin adding work to every task)."""
    log = list(dask_worker.transfer_incoming_log)
    return dask_worker.state.executed_count, len(log), sum(int(t["total"]) for t in log)


def _totals(client: Any) -> list[int]:
    got = client.run(_worker_counts).values()
    return [sum(c[i] for c in got) for i in range(3)]


@contextmanager
def _counted(client: Any) -> Iterator[dict[str, int]]:
    """Tasks run and worker-to-worker transfers inside the block."""
    out = {"tasks": 0, "transfers": 0, "transfer_bytes": 0}
    if client is None:
        with _Count() as c:
            yield out
        out["tasks"] = c.tasks
        return
    before = _totals(client)
    yield out
    after = _totals(client)
    out["tasks"], out["transfers"], out["transfer_bytes"] = (
        a - b for a, b in zip(after, before, strict=True)
    )


def _run(
    spec: str, size: str, body: Callable[[Any], float], *, quiet: bool = True
) -> dict[str, Any]:
    """``body(source) -> fit seconds`` on scheduler ``spec``, timed as a command is."""
    source = _input(size)
    t0 = time.perf_counter()
    with scheduler(spec, workers=WORKERS, quiet=quiet) as client:
        started = time.perf_counter()
        with _counted(client) as counts:
            ds = open_cube(source, keep_bytes=keep_between_passes(spec, source))
            fit_s = body(ds)
        done = time.perf_counter()
    return {
        "startup_s": round(started - t0, 3),
        "fit_s": round(fit_s, 3),
        "apply_s": round(done - started - fit_s, 3),
        "tasks": counts["tasks"],
        "transfers": counts["transfers"],
        "transfer_mb": round(counts["transfer_bytes"] / 2**20, 3),
    }


def _standardize(workdir: Path) -> Callable[[Any], float]:
    def body(ds: Any) -> float:
        t0 = time.perf_counter()
        out = standardize(ds)  # fits (computes) the statistics, then builds the apply
        fit_s = time.perf_counter() - t0
        write_cube(out, workdir / "z.zarr", op="standardize")
        return fit_s

    return body


def _compress(workdir: Path) -> Callable[[Any], float]:
    def body(ds: Any) -> float:
        t0 = time.perf_counter()
        job = prepare_compress(ds, components=K)
        fit_s = time.perf_counter() - t0
        job.write(workdir / "scores.zarr", device="cpu")
        return fit_s

    return body


def threads_standardize(size: str, workdir: Path) -> dict[str, Any]:
    return _run("threads", size, _standardize(workdir))


def local_standardize(size: str, workdir: Path) -> dict[str, Any]:
    return _run("local", size, _standardize(workdir))


def local_standardize_dashboard(size: str, workdir: Path) -> dict[str, Any]:
    """As ``local_standardize``, not quiet: the dashboard is started (its link printed)."""
    return _run("local", size, _standardize(workdir), quiet=False)


def threads_compress(size: str, workdir: Path) -> dict[str, Any]:
    return _run("threads", size, _compress(workdir))


def local_compress(size: str, workdir: Path) -> dict[str, Any]:
    return _run("local", size, _compress(workdir))


def _one() -> int:
    return 1


def local_start(size: str, workdir: Path) -> dict[str, Any]:
    """Start the cluster, run one task on it, close it."""
    t0 = time.perf_counter()
    with scheduler("local", workers=WORKERS, quiet=True) as client:
        started = time.perf_counter()
        client.submit(_one).result()
        first = time.perf_counter()
    closed = time.perf_counter()
    return {
        "startup_s": round(started - t0, 3),
        "first_task_s": round(first - started, 3),
        "close_s": round(closed - first, 3),
    }


floor_standardize = floor_case(lambda s: [_input(s)], lambda s: cube_bytes(_input(s)), reads=2)
floor_compress = floor_case(
    lambda s: [_input(s)], lambda s: cube_bytes(_input(s), bands=K), reads=2
)


def summary(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"Goal (issue 19, item 6): local (LocalCluster, {WORKERS} worker processes of one "
        f"thread) within {GOAL}x of threads, cluster start-up included. Floor of a "
        "process cluster: the threaded run's seconds plus `local_start` (start the workers, "
        "one task, close: what no cluster of processes avoids); `local / floor` is what the "
        "cluster costs beyond it (the workers re-read the chunks the threaded run keeps "
        "between passes, and pay task and process overhead).",
        "",
        "| size | operation | threads s | local s | local / threads | goal met | "
        "local tasks | transfers (MiB) | start-up s | floor s (threads + local_start) | "
        "local / floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["size"], r["case"]): r for r in rows}
    for size in dict.fromkeys(r["size"] for r in rows):
        for op, local in (
            ("standardize", "local_standardize"),
            ("standardize (dashboard)", "local_standardize_dashboard"),
            ("compress", "local_compress"),
        ):
            t, loc = by.get((size, f"threads_{op.split()[0]}")), by.get((size, local))
            if t is None or loc is None:
                continue
            ratio = loc["seconds"] / t["seconds"]
            start = by.get((size, "local_start"))
            floor = t["seconds"] + start["seconds"] if start is not None else None
            floor_cells = f"{floor:.2f} | {loc['seconds'] / floor:.2f}x" if floor else " | "
            lines.append(
                f"| {size} | {op} | {t['seconds']:.2f} | {loc['seconds']:.2f} | "
                f"{ratio:.2f}x | {'yes' if ratio <= GOAL else 'no'} | {loc['tasks']} | "
                f"{loc['transfers']} ({loc['transfer_mb']:.3f}) | {loc['startup_s']:.2f} | "
                f"{floor_cells} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main(
        "bench_distributed",
        {
            "threads_standardize": threads_standardize,
            "local_standardize": local_standardize,
            "local_standardize_dashboard": local_standardize_dashboard,
            "threads_compress": threads_compress,
            "local_compress": local_compress,
            "local_start": local_start,
            "floor_standardize": floor_standardize,
            "floor_compress": floor_compress,
        },
        baseline="threads_standardize",
        sizes=("1x", "4x"),
        quick_size="tiny",
        prepare=prepare,
        floor={
            "threads_standardize": "floor_standardize",
            "local_standardize": "floor_standardize",
            "local_standardize_dashboard": "floor_standardize",
            "threads_compress": "floor_compress",
            "local_compress": "floor_compress",
        },
        columns=(
            "startup_s",
            "fit_s",
            "apply_s",
            "tasks",
            "transfers",
            "transfer_mb",
        ),
        summary=summary,
        notes=f"Input: synthetic signed-float cube (benchmarks/bench_standardize.py's), chunks "
        f"15 x 512 x 512, cubepipe's default codecs. local: `scheduling.scheduler('local', "
        f"workers={WORKERS}, quiet=True)` (workers forked on Linux, one BLAS thread each, no "
        "dashboard); threads: dask's threaded scheduler, one thread per core. Both read the "
        "input twice except for the chunks the threaded run keeps between passes "
        "(keep_between_passes; a worker process keeps none).",
    )
