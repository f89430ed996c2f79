"""Peak memory of ``cubepipe --scheduler local --workers 1 --memory-limit 1GB`` on a cube
several times larger than the limit (issue 7).

Every case is the real command line in a subprocess whose whole process tree is sampled
every 50 ms (``_memory.run_sampled``): the main process (cubepipe's client and, with
``--scheduler local``, the dask scheduler and nanny, which live in it), the worker process
and multiprocessing's resource tracker.

Cases:
- ``idle_cluster`` (baseline): the same command line on a tiny store (``stats --no-save``
  of 15 x 64 x 64): the fixed cost of the cluster and of cubepipe's imports;
- ``standardize``: fit the per-band statistics and write z-scores (two reads, one write);
- ``compress``: ``compress -k 5`` (PCA fit: one read; project, measure error: one more);
- ``run``: ``cubepipe run`` of standardize -> compress on one cluster.

``--memory-limit`` is dask's per-worker limit: the nanny restarts a worker whose resident
memory passes 95% of it, and the worker pauses at 80% and spills at 70%. A pause, a
restart or spilled bytes are reported (a restart fails the run). The limit bounds the
worker; the main process and the helpers come on top of it: that is the stated overhead,
measured by ``idle_cluster`` and checked for every case (tree peak <= limit + overhead).

Floors (issue 19; ``_common.floor_case``: the codec work alone, one thread per core, so
on 2 cores twice the one worker thread the cases get): ``floor_standardize`` reads and
decodes the input twice and encodes the cube's bytes; ``floor_compress`` reads it twice and
encodes 5/15 of them (the scores); ``floor_run`` both (four reads, both outputs).
``x_floor`` is each case over its own floor.

Sizes: ``4GB`` = 15 x 8192 x 8192 float32 (4.03 GB, 3.75 GiB: four times the limit);
``tiny`` for ``--quick``. Run ``python benchmarks/bench_memory_limit.py`` (about 10 min on
2 cores; the input is made once under /tmp/cubepipe-bench-inputs).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import store_state, write_cube

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import INPUTS, cube_bytes, floor_case, main
from _memory import run_sampled

warnings.filterwarnings("ignore", message="Consolidated metadata")

SIZES = {"tiny": (15, 512, 512), "4GB": (15, 8192, 8192)}
LIMIT = "1GB"
LIMIT_MB = 1e9 / 2**20  # dask reads "1GB" as 10**9 bytes: 953.7 MiB
#: What the main process (client + scheduler + nanny) and the helpers may add on top of
#: the per-worker limit: the idle cluster's measured cost plus room for the graph and
#: the results the client holds. Stated in the README.
OVERHEAD_MB = 400


def _input(size: str) -> Path:
    return INPUTS / f"memory-limit-{size}.zarr"


def _idle_input() -> Path:
    return INPUTS / "memory-limit-idle.zarr"


def prepare(size: str) -> None:
    INPUTS.mkdir(parents=True, exist_ok=True)
    for path, shape in ((_input(size), SIZES[size]), (_idle_input(), (15, 64, 64))):
        if store_state(path) != "complete":
            # Generated and written chunk by chunk: never held in memory.
            write_cube(make_cube(shape, seed=0), path, op="bench-input", overwrite=True)


def _cubepipe(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("cubepipe")
    return [
        str(exe) if exe.exists() else "cubepipe",
        "--device",
        "cpu",
        "--scheduler",
        "local",
        "--workers",
        "1",
        "--memory-limit",
        LIMIT,
        *args,
    ]


def _measure(argv: list[str], workdir: Path) -> dict[str, Any]:
    res = run_sampled(argv, cwd=workdir, scratch=workdir / "dask-scratch")
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    row = res.as_row()
    row["limit_mb"] = round(LIMIT_MB, 1)
    # A restarted worker means the limit was violated (the nanny kills it at 95%).
    row["worker_under_limit"] = (
        res.worker_peak_mb < LIMIT_MB and res.restarts == 0 and len(res.worker_pids) == 1
    )
    row["tree_under_limit_plus_overhead"] = res.tree_peak_mb < LIMIT_MB + OVERHEAD_MB
    # _common's table columns: the whole tree, not this sampling process
    row["peak_rss_mb"], row["peak_anon_mb"] = res.tree_peak_mb, res.tree_peak_anon_mb
    for d in workdir.iterdir():
        if d.suffix == ".zarr":
            shutil.rmtree(d)  # the outputs are not needed: free the disk early
    return row


def idle_cluster(size: str, workdir: Path) -> dict[str, Any]:
    return _measure(_cubepipe("-q", "stats", str(_idle_input()), "--no-save"), workdir)


def standardize(size: str, workdir: Path) -> dict[str, Any]:
    return _measure(_cubepipe("standardize", str(_input(size)), "-o", "z.zarr"), workdir)


def compress(size: str, workdir: Path) -> dict[str, Any]:
    return _measure(_cubepipe("compress", str(_input(size)), "-o", "c.zarr", "-k", "5"), workdir)


def run(size: str, workdir: Path) -> dict[str, Any]:
    doc = {
        "steps": [
            {"standardize": {"in": str(_input(size)), "out": "z.zarr"}},
            {"compress": {"out": "c.zarr", "components": 5}},
        ]
    }
    (workdir / "p.yaml").write_text(yaml.safe_dump(doc))
    return _measure(_cubepipe("run", "p.yaml"), workdir)


def _out_bytes(bands: int | None) -> Any:
    def out(size: str) -> int:
        return cube_bytes(_input(size), bands=bands)

    return out


def _floor(reads: int, *bands: int | None) -> Any:
    outs = [_out_bytes(b) for b in bands]
    return floor_case(lambda size: [_input(size)], lambda s: sum(o(s) for o in outs), reads=reads)


FLOORS = {"standardize": "floor_standardize", "compress": "floor_compress", "run": "floor_run"}


def summary(rows: list[dict[str, Any]]) -> str:
    base = {r["size"]: r for r in rows if r["case"] == "idle_cluster"}
    lines = []
    for r in rows:
        if r["case"] == "idle_cluster" or r["case"] in FLOORS.values():
            continue
        b = base[r["size"]]
        verdict = (
            "PASS" if r["worker_under_limit"] and r["tree_under_limit_plus_overhead"] else "FAIL"
        )
        lines.append(
            f"- {r['size']} {r['case']}: worker peak {r['worker_peak_mb']:.0f} MiB of the "
            f"{LIMIT_MB:.0f} MiB limit ({100 * r['worker_peak_mb'] / LIMIT_MB:.0f}%); main "
            f"process (client + scheduler + nanny) {r['main_peak_mb']:.0f} MiB (idle: "
            f"{b['main_peak_mb']:.0f}); whole tree {r['tree_peak_mb']:.0f} MiB <= limit + "
            f"{OVERHEAD_MB} MiB stated overhead = {LIMIT_MB + OVERHEAD_MB:.0f} MiB; paused "
            f"{r['paused']}x, restarts {r['restarts']}, spilled {r['spilled_peak_mb']:.0f} "
            f"MiB: {verdict}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main(
        "bench_memory_limit",
        {
            "idle_cluster": idle_cluster,
            "standardize": standardize,
            "compress": compress,
            "run": run,
            "floor_standardize": _floor(2, None),
            "floor_compress": _floor(2, 5),
            "floor_run": _floor(4, None, 5),
        },
        floor=FLOORS,
        baseline="idle_cluster",
        sizes=("4GB",),
        quick_size="tiny",
        prepare=prepare,
        repeat=1,
        columns=(
            "worker_peak_mb",
            "worker_peak_anon_mb",
            "main_peak_mb",
            "limit_mb",
            "paused",
            "restarts",
            "spilled_peak_mb",
        ),
        summary=summary,
        notes=f"Every case: `cubepipe --scheduler local --workers 1 --memory-limit {LIMIT}` "
        "(threads_per_worker 1) on a synthetic float32 cube of 15 x 8192 x 8192 (4.03 GB, "
        "chunks 15 x 512 x 512), one run each. In this table peak_rss_mb / peak_anon_mb are "
        "the whole process tree's (sum of VmRSS / RssAnon over the main process, the worker "
        "and the helpers, sampled together every 50 ms); worker_peak_mb and main_peak_mb are "
        "those processes' own VmHWM (kernel high-water mark, includes mapped library pages); "
        f"limit_mb is 1 GB = 10^9 bytes as dask reads it. Stated overhead: {OVERHEAD_MB} MiB "
        "for the main process and helpers on top of the per-worker limit. floor_*: the "
        "codec work of each case alone (reads: 2, 2, 4; output: the cube, 5/15 of it, "
        "both), on one thread per core (the cases' worker has one thread); x_floor: each "
        "case over its floor.",
    )
