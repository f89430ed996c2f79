"""Where dask runs the graphs: threads (default), a local cluster, or an existing one."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import dask
from dask.utils import parse_bytes

from cubepipe.storage.errors import InputError, MissingDependencyError

__all__ = ["check_memory_limit", "check_scheduler", "scheduler"]

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


@contextlib.contextmanager
def scheduler(
    spec: str = "threads",
    *,
    workers: int | None = None,
    memory_limit: str | None = None,
    quiet: bool = False,
) -> Iterator[Any]:
    """Run the enclosed dask computations on the scheduler named by ``spec``.

    ``threads`` uses dask's threaded scheduler (no cluster). ``local`` starts a
    ``dask.distributed.LocalCluster`` (``workers`` processes of one thread, ``memory_limit``
    *each*, with dask's spill/pause/restart thresholds of 70/80/95% of it) and prints its
    dashboard link to stderr. The scheduler and nannies run in this process, outside the
    limit (``benchmarks/bench_memory_limit.py`` measures both). Anything else is taken as the address of a running
    scheduler (``tcp://HOST:PORT``) to join. Yields the ``distributed.Client`` or None.
    """
    spec = check_scheduler(spec)
    if spec in _THREADED:
        name = "threads" if spec.startswith("thread") else "synchronous"
        with dask.config.set(scheduler=name):
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
