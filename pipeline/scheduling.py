"""Where dask runs the graphs: threads (default), a local cluster, or an existing one."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.local
import dask.threaded
from dask.utils import parse_bytes
from threadpoolctl import threadpool_limits

from cubepipe.storage.chunkio import largest_chunk
from cubepipe.storage.errors import InputError, MissingDependencyError

__all__ = ["check_memory_limit", "check_scheduler", "keep_between_passes", "scheduler"]

_THREADED = ("threads", "threaded", "sync", "synchronous")


def check_scheduler(spec: str) -> str:
    """Validate a ``--scheduler`` value before any work starts; returns it normalised."""
    spec = (spec or "threads").strip()
    if spec in _THREADED:
        return spec
    if spec != "local" and "://" not in spec and ":" not in spec:
        raise InputError(
            f"--scheduler: {spec!r} is not threads, local or a scheduler address such as "
            "tcp://HOST:8786"
        )
    _distributed()
    return spec


def check_memory_limit(text: str | None) -> str | None:
    """Validate a ``--memory-limit`` value (``1GB``, ``512MiB``, ``2e9``); returns it as
    given. It is dask's limit for *each* worker process of ``--scheduler local``."""
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    try:
        n = parse_bytes(text)
    except (ValueError, TypeError):
        n = 0
    if n <= 0:
        raise InputError(
            f"--memory-limit: {text!r} is not a memory size such as 1GB, 512MiB or 2e9 (bytes)"
        )
    return text


def _distributed() -> Any:
    try:
        import distributed  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependencyError(
            "--scheduler local/ADDRESS (dask.distributed)", "distributed", "distributed"
        ) from exc
    return distributed


#: Chunk data a fit-then-apply command may hold per dask thread on the threaded
#: scheduler: the chunk a thread works on (counted three times: the chunk, its float64
#: strips, its output) plus chunks kept from the fitting pass for the applying one.
TWO_PASS_BYTES_PER_THREAD = 128 * 2**20


def keep_between_passes(spec: str, store: str | Path) -> int:
    """Bytes of decoded chunks of ``store`` to keep between a command's fitting and
    applying passes (``open_cube(store, keep_bytes=)``), so the second pass re-reads only
    the rest.

    ``TWO_PASS_BYTES_PER_THREAD`` per dask thread, less what the threads' chunks in flight
    take; 0 for large chunks and off the threaded scheduler (each distributed worker has
    its own memory limit and re-reads). Fixed, so memory does not grow with the cube.
    """
    if spec not in ("threads", "threaded"):
        return 0
    chunk_nbytes = largest_chunk([p for p in Path(store).iterdir() if p.is_dir()])
    if chunk_nbytes <= 0:
        return 0
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    return max(0, workers * (TWO_PASS_BYTES_PER_THREAD - 3 * chunk_nbytes))


@contextlib.contextmanager
def _blas_threads(name: str) -> Iterator[None]:
    """One BLAS thread per dask thread while the threaded scheduler runs.

    Each dask thread runs its own chunk's matmuls; a multi-threaded BLAS (OpenBLAS, MKL)
    inside every one of them oversubscribes the cores, and OpenBLAS's shared thread pool
    then spends more time waiting than computing: the 224-band PCA of bench_pca ran 1.9x
    slower that way. dask.distributed workers already start with ``OPENBLAS_NUM_THREADS=1``.
    """
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    if name != "threads" or workers < 2:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def scheduler(
    spec: str = "threads",
    *,
    workers: int | None = None,
    memory_limit: str | None = None,
    quiet: bool = False,
) -> Iterator[Any]:
    """Run the enclosed dask computations on the scheduler named by ``spec``.

    ``threads`` uses dask's threaded scheduler (no cluster), with BLAS limited to one
    thread per dask thread (see :func:`_blas_threads`). ``local`` starts a
    ``dask.distributed.LocalCluster`` (``workers`` processes of one thread, ``memory_limit``
    *each*, with dask's spill/pause/restart thresholds of 70/80/95% of it) and prints its
    dashboard link to stderr. The scheduler and nannies run in this process, outside the
    limit (``benchmarks/bench_memory_limit.py`` measures both). Anything else is taken as the address of a running
    scheduler (``tcp://HOST:PORT``) to join. Yields the ``distributed.Client`` or None.
    """
    spec = check_scheduler(spec)
    if spec in _THREADED:
        name = "threads" if spec.startswith("thread") else "synchronous"
        # The scheduler function itself, not its name, and rechunks by tasks: dask
        # resolves a scheduler name, and picks a rechunk method, by importing
        # dask.distributed when it is installed (~0.2-0.5 s a process) only to look for a
        # client this mode never uses (without one it picks "tasks" anyway).
        get = dask.threaded.get if name == "threads" else dask.local.get_sync
        config = {"scheduler": get, "array.rechunk.method": "tasks"}
        with dask.config.set(config), _blas_threads(name):
            yield None
        return
    distributed = _distributed()
    if spec == "local":
        kwargs: dict[str, Any] = {"threads_per_worker": 1, "dashboard_address": ":0"}
        if workers:
            kwargs["n_workers"] = workers
        if memory_limit:
            kwargs["memory_limit"] = check_memory_limit(memory_limit)
        with (
            distributed.LocalCluster(**kwargs) as cluster,
            distributed.Client(cluster) as client,
        ):
            if not quiet:
                print(f"cubepipe: dask dashboard at {client.dashboard_link}", file=sys.stderr)
            yield client
        return
    try:
        client = distributed.Client(spec, timeout="10s")
    except OSError as exc:
        raise InputError(f"--scheduler: could not reach a dask scheduler at {spec}: {exc}") from exc
    with client:
        if not quiet:
            print(f"cubepipe: joined {spec}; dashboard at {client.dashboard_link}", file=sys.stderr)
        yield client
