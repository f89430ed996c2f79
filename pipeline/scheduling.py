"""Where dask runs the graphs: threads (default), a local cluster, or an existing one."""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.local
import dask.threaded
from dask.utils import parse_bytes
from threadpoolctl import threadpool_limits

from cubepipe.storage.chunkio import largest_chunk
from cubepipe.storage.errors import InputError, MissingDependencyError
from cubepipe.storage.location import is_remote

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "LOCAL_CLUSTER_CONFIG",
    "MIN_WORKER_MEMORY",
    "check_memory_limit",
    "check_scheduler",
    "check_workers",
    "keep_between_passes",
    "local_cluster",
    "probe_scheduler",
    "scheduler",
    "worker_start_method",
]

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


#: The smallest ``--memory-limit`` a ``--scheduler local`` worker can work under: a
#: worker process idles at about 250 MiB of code and libraries (benchmarks/results/
#: bench_memory_limit.md: 243 MiB), holds a few chunks while it works (4 x 15 MiB for the
#: default 15-band 512 x 512 float32 chunks: it peaked at 317 MiB), and dask *pauses* it
#: at 80% of its limit: (250 + 4 x 15) MiB / 0.8 ~ 390 MiB, rounded up. Below it a worker
#: pauses before its first task and the job waits forever.
MIN_WORKER_MEMORY = 400 * 2**20
_MIN_WORKER_TEXT = "400 MiB"


def check_memory_limit(text: str | None, *, scheduler: str | None = None) -> str | None:
    """Validate a ``--memory-limit`` value (``1GB``, ``512MiB``, ``2e9``); returns it as
    given. It is dask's limit for *each* worker process of ``--scheduler local``.

    With ``scheduler="local"`` (the only scheduler that uses it) a limit below
    :data:`MIN_WORKER_MEMORY` is refused too, before any worker starts."""
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
    if scheduler == "local" and n < MIN_WORKER_MEMORY:
        raise InputError(
            f"--memory-limit {text} is below the minimum a worker needs ({_MIN_WORKER_TEXT}: "
            "~250 MiB of code and libraries plus a few chunks, and dask pauses a worker at 80% "
            f"of its limit, so it would wait forever); raise it to at least {_MIN_WORKER_TEXT} "
            "(e.g. 1GB), or leave it out to share the machine's memory among the workers"
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
#: scheduler: the chunks a thread works on (counted four times: the decoded chunk, its
#: output, the encoded bytes read and written) plus chunks kept from the fitting pass for
#: the applying one. Fixed, so that peak memory does not grow with the cube: with 2
#: threads and 15 x 512 x 512 float32 chunks, 2 x (128 - 4 x 15) MiB = 136 MiB are kept
#: (standardize with 166 MiB kept peaked at 526-535 MB RSS at 4x, 341-374 MB with none;
#: the goal, issue 19, is under 600 MB at every size: benchmarks/bench_standardize.py).
TWO_PASS_BYTES_PER_THREAD = 128 * 2**20


def keep_between_passes(spec: str, store: str | Path, *, available: int | None = None) -> int:
    """Bytes of decoded chunks of ``store`` to keep between a command's fitting and
    applying passes (``open_cube(store, keep_bytes=)``), so the second pass re-reads only
    the rest.

    The budget: ``min(available / 8, threads x (TWO_PASS_BYTES_PER_THREAD - 4 x chunk))``,
    where ``available`` is the memory this process could still get (``MemAvailable`` of
    ``/proc/meminfo``, and the room left under a cgroup v2 ``memory.max``; unknown: the
    second term alone). The second term is fixed, so peak memory stays flat as the cube
    grows; the first shrinks it on a machine short of memory. 0 for chunks too large to
    keep (four per thread over the per-thread figure), off the threaded scheduler (each
    distributed worker has its own memory limit and re-reads) and for remote stores.
    ``available`` (bytes) replaces what the system says.
    """
    if spec not in ("threads", "threaded") or is_remote(store):
        return 0
    chunk_nbytes = largest_chunk([p for p in Path(store).iterdir() if p.is_dir()])
    if chunk_nbytes <= 0:
        return 0
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    fixed = max(0, workers * (TWO_PASS_BYTES_PER_THREAD - 4 * chunk_nbytes))
    if available is not None:
        return max(0, min(fixed, available // 8))
    room = []
    try:
        with open("/proc/meminfo") as fh:
            room += [int(x.split()[1]) * 1024 for x in fh if x.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:  # a cgroup v2 limit (a container): MemAvailable counts the whole host
        cg = Path("/sys/fs/cgroup")
        limit = (cg / "memory.max").read_text().strip()
        if limit != "max":
            room.append(max(0, int(limit) - int((cg / "memory.current").read_text())))
    except (OSError, ValueError):
        pass
    return min([fixed, *(r // 8 for r in room)])


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


#: Seconds to wait for a scheduler given by address (``--connect-timeout``).
DEFAULT_CONNECT_TIMEOUT = 30.0
#: A dask scheduler's first message (its handshake: a small dict) is a few hundred bytes.
_MAX_HANDSHAKE_BYTES = 2**20


def _seconds(t: float) -> str:
    return f"{t:g} s"


def _recv_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    """``n`` bytes from ``sock`` (fewer only if the peer closes), by ``deadline``."""
    data = bytearray()
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        part = sock.recv(min(n - len(data), 65536))
        if not part:
            break
        data += part
    return bytes(data)


def probe_scheduler(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
    """Check that a dask scheduler answers at ``address`` (``tcp://HOST:PORT``) within
    ``timeout`` seconds, before ``distributed.Client`` is handed the address.

    A dask scheduler speaks first: on accepting a connection it sends its handshake, a
    message framed by an 8-byte length. The client in ``distributed`` reads that length
    without a timeout and allocates it at once, so a server that never answers hangs it
    forever, and one that speaks another protocol (an HTTP server: ``b"HTTP/1.1"`` read as
    a length is ~3.5 EiB) makes it try to allocate exabytes. This probe reads the first
    message itself, with the timeout, and accepts only a small, well-framed one. Other
    schemes (``tls://``, ``ucx://``, ``inproc://``) are left to ``distributed``.

    Raises
    ------
    InputError
        Nothing listens there, nothing answered in time, or the answer is not dask's.
    """
    from distributed.comm.addressing import parse_address, parse_host_port  # noqa: PLC0415

    scheme, loc = parse_address(address)
    if scheme != "tcp":
        return
    host, port = parse_host_port(loc, default_port=8786)
    within = _seconds(timeout)
    fix = "check the address, or raise --connect-timeout"
    head = f"could not connect to the dask scheduler at {address}"
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise InputError(
            f"{head} within {within}: the connection was not accepted; {fix}"
        ) from None
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise InputError(
            f"{head}: {why}; check the address and that the scheduler is running there"
        ) from None
    with sock:
        try:
            first = _recv_exactly(sock, 8, deadline)
            (size,) = struct.unpack("Q", first) if len(first) == 8 else (0,)
            body = b""
            if 16 <= size <= _MAX_HANDSHAKE_BYTES:
                body = _recv_exactly(sock, size, deadline)
        except TimeoutError:
            raise InputError(
                f"{head} within {within}: it accepted the connection but sent no dask "
                f"handshake (not a dask scheduler, or one too busy to answer); {fix}"
            ) from None
        except OSError as exc:
            raise InputError(f"{head}: {exc.strerror or exc}; {fix}") from None
    if not first:
        raise InputError(
            f"{head}: it closed the connection without a dask handshake (not a dask "
            "scheduler?); check the address"
        )
    if len(body) != size or not _is_dask_frames(body):
        shown = first.decode("ascii", "replace") if first.isascii() else first.hex(" ")
        hint = " (an HTTP server: the dashboard?)" if first.startswith(b"HTTP/") else ""
        raise InputError(
            f"{head}: the server there speaks another protocol{hint}, its first bytes "
            f"were {shown!r}; check the address (a dask scheduler's default port is 8786, "
            "its dashboard's 8787)"
        )


def _is_dask_frames(body: bytes) -> bool:
    """Whether ``body`` is laid out as distributed packs frames: a count, the lengths,
    the frames (``distributed.protocol.utils.pack_frames``)."""
    if len(body) < 16:
        return False
    (n_frames,) = struct.unpack_from("Q", body)
    if not 1 <= n_frames <= 64 or 8 * (1 + n_frames) > len(body):
        return False
    lengths = struct.unpack_from(f"{n_frames}Q", body, 8)
    return 8 * (1 + n_frames) + sum(lengths) == len(body)


@contextlib.contextmanager
def scheduler(
    spec: str = "threads",
    *,
    workers: int | None = None,
    memory_limit: str | None = None,
    quiet: bool = False,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    paths: tuple[Sequence[str], str | None] = ((), None),
) -> Iterator[Any]:
    """Run the enclosed dask computations on the scheduler named by ``spec``.

    ``threads`` uses dask's threaded scheduler (no cluster), with BLAS limited to one
    thread per dask thread (see :func:`_blas_threads`). ``local`` starts a
    ``dask.distributed.LocalCluster`` (:func:`local_cluster`: ``workers`` processes of one
    thread, forked on Linux, one BLAS thread each, ``memory_limit`` *each*, with dask's
    spill/pause/restart thresholds of 70/80/95% of it) and prints its dashboard link to
    stderr (``quiet``: no dashboard, whose link nobody would see). The scheduler and nannies run in this process, outside the
    limit (``benchmarks/bench_memory_limit.py`` measures both); a ``memory_limit`` below
    :data:`MIN_WORKER_MEMORY` is refused before the cluster starts. Anything else is taken
    as the address of a running scheduler (``tcp://HOST:PORT``) to join, which must answer
    within ``connect_timeout`` seconds (:func:`probe_scheduler`) and whose workers must
    pass :func:`check_workers` for ``paths`` (the inputs the work reads, the output it
    writes). Yields the ``distributed.Client`` or None.
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
        with local_cluster(workers=workers, memory_limit=memory_limit, dashboard=not quiet) as (
            client
        ):
            if not quiet:
                print(f"cubepipe: dask dashboard at {client.dashboard_link}", file=sys.stderr)
            yield client
        return
    probe_scheduler(spec, connect_timeout)
    try:
        client = distributed.Client(spec, timeout=connect_timeout)
    except (OSError, TimeoutError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(
            f"could not connect to the dask scheduler at {spec} within "
            f"{_seconds(connect_timeout)}: {msg}; check the address, or raise --connect-timeout"
        ) from exc
    with client:
        check_workers(client, spec, paths[0], paths[1], timeout=connect_timeout)
        if not quiet:
            print(f"cubepipe: joined {spec}; dashboard at {client.dashboard_link}", file=sys.stderr)
        yield client


#: How ``--scheduler local`` starts its worker processes (env ``CUBEPIPE_WORKER_START``):
#: ``fork`` where the platform forks safely (Linux), else dask's default ``spawn``.
WORKER_START_ENV = "CUBEPIPE_WORKER_START"


def worker_start_method() -> str:
    """``fork``, ``spawn`` or ``forkserver``: how :func:`local_cluster` starts workers.

    ``fork`` (the default on Linux) makes a worker a copy of this process, with its
    modules already imported: a worker is ready in ~0.1 s, where ``spawn`` (dask's
    default, and the only safe choice on macOS and Windows) starts a fresh interpreter
    that imports dask, distributed, NumPy and the command's own modules again (~1-2 s a
    worker, on every core at once: 2.3x the threaded scheduler's time for standardize at
    1x on 2 cores, issue 19). ``CUBEPIPE_WORKER_START=spawn`` is the way back.
    """
    value = os.environ.get(WORKER_START_ENV, "").strip().lower()
    if value in ("fork", "spawn", "forkserver"):
        return value
    if value:
        raise InputError(
            f"{WORKER_START_ENV}={value!r}: expected fork, spawn or forkserver (how "
            "--scheduler local starts its workers)"
        )
    return "fork" if sys.platform.startswith("linux") else "spawn"


#: dask.distributed settings for a cluster on this machine, where every CPU second its
#: bookkeeping takes is one the work does not get. An idle 2-worker cluster took 40 ms of
#: CPU a second in this process and 35 ms in each worker; with these, 24 and 9:
#: - each worker's sampling profiler (a thread that takes the GIL every 10 ms to walk the
#:   task thread's stack, for the dashboard's Profile page) is off;
#: - the event-loop watchdog ticks every second instead of every 20 ms;
#: - the system monitor (CPU, memory, network for the dashboard) samples every 2 s, not
#:   every 0.5 s.
#: Memory limits are still watched every 100 ms (``distributed.worker.memory``).
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}


def _warm_imports() -> None:
    """Import here what every worker imports at its first chunk task (the array-API
    wrapper of NumPy, distributed's NumPy serializer), so that forked workers have it."""
    import array_api_compat.numpy  # noqa: F401, PLC0415
    import distributed.protocol.numpy  # noqa: F401, PLC0415


@contextlib.contextmanager
def local_cluster(
    *,
    workers: int | None = None,
    memory_limit: str | None = None,
    dashboard: bool = True,
    threads_per_worker: int = 1,
) -> Iterator[Any]:
    """A ``dask.distributed.LocalCluster`` of worker processes and a client to it.

    What makes a cluster on one machine cost little more than the threaded scheduler
    (``benchmarks/bench_distributed.py`` measures both):

    - workers start by :func:`worker_start_method` (``fork`` on Linux: no imports);
    - BLAS runs ``threads_per_worker`` threads in each worker, as it does in a spawned
      one (dask's ``OPENBLAS_NUM_THREADS=1`` and friends are read only when the library
      loads, which a forked worker inherited already loaded): the limit is set in this
      process for the cluster's lifetime (BLAS only: this process trains autoencoders
      with torch's own threads), so every worker forked (or restarted) from it has it;
      two workers with two BLAS threads each made compress 3x slower on 2 cores;
    - the dashboard only when ``dashboard`` (its link is printed: without it nobody
      could find the random port), and then its HTTP server listens at once while its
      pages (bokeh: ~1 s of imports) are attached by a thread as the work starts
      (:func:`_attach_dashboard`);
    - :data:`LOCAL_CLUSTER_CONFIG`: less bookkeeping CPU in every process;
    - what the first task of every worker would import is imported here first.

    Yields the ``distributed.Client``.
    """
    distributed = _distributed()
    kwargs: dict[str, Any] = {
        "threads_per_worker": threads_per_worker,
        # The scheduler's HTTP server (and so the link) on a free port now, always (with
        # no address it takes 8787 and warns when another cluster has it); bokeh's
        # pages later, by a thread, when there is a dashboard to show.
        "dashboard_address": ":0",
        "scheduler_kwargs": {"dashboard": False},
    }
    if workers:
        kwargs["n_workers"] = workers
    if memory_limit:
        kwargs["memory_limit"] = check_memory_limit(memory_limit, scheduler="local")
    method = worker_start_method()
    if method == "fork":
        _warm_imports()
    config = {**LOCAL_CLUSTER_CONFIG, "distributed.worker.multiprocessing-method": method}
    with (
        dask.config.set(config),
        threadpool_limits(limits=threads_per_worker, user_api="blas"),
        distributed.LocalCluster(**kwargs) as cluster,
        distributed.Client(cluster) as client,
    ):
        attaching = _attach_dashboard(cluster) if dashboard else None
        try:
            yield client
        finally:
            if attaching is not None:
                attaching.join()


def _attach_dashboard(cluster: Any) -> threading.Thread:
    """Attach the dashboard's pages to the running scheduler of ``cluster`` (in this
    process) from a thread: importing them (bokeh) takes ~1 s of CPU, which would
    otherwise delay the cluster's start and so every command on it. What
    ``Scheduler(dashboard=True)`` does at start, done on its event loop once imported;
    if bokeh is missing or the cluster is gone by then, the link shows dask's plain pages.
    """

    def connect(scheduler: Any) -> None:
        from distributed.dashboard.scheduler import connect  # noqa: PLC0415

        connect(scheduler.http_application, scheduler.http_server, scheduler)

    def attach() -> None:
        try:
            import distributed.dashboard.scheduler  # noqa: F401, PLC0415

            cluster.loop.add_callback(connect, cluster.scheduler)
        except Exception:  # no bokeh, or the loop closed: no dashboard pages
            return

    thread = threading.Thread(target=attach, name="cubepipe-dashboard", daemon=True)
    thread.start()
    return thread


# What each worker of a remote cluster runs before any work: no cubepipe import at
# unpickling (it is sent by value, so a worker without cubepipe can still answer).
_WORKER_PROBE = """
def probe(paths, marker):
    import importlib, importlib.metadata, os
    out = {"cwd": os.getcwd(), "version": None, "error": "", "missing": []}
    try:
        importlib.import_module("cubepipe.storage")
        out["version"] = importlib.metadata.version("cubepipe")
    except Exception as exc:
        out["error"] = type(exc).__name__ + ": " + " ".join(str(exc).split())
    out["missing"] = [p for p in paths if not os.path.exists(p)]
    if marker is not None and not os.path.exists(marker):
        out["missing"].append(os.path.dirname(marker))
    return out
"""


def _worker_probe() -> Any:
    namespace: dict[str, Any] = {"__name__": "cubepipe_worker_probe"}
    exec(_WORKER_PROBE, namespace)  # a module-less function: cloudpickle sends it by value
    return namespace["probe"]


def check_workers(
    client: Any,
    address: str,
    inputs: Sequence[str],
    output: str | None,
    *,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Refuse, in one line, a remote cluster whose workers cannot do the work as this
    process would: no worker joins within ``timeout``; a worker cannot import cubepipe
    or has another version; a worker cannot see an input, or the directory the output
    goes to (tested with a marker file made there: a directory of the same name on
    another machine does not pass). Paths are absolute, as this process sees them.

    Raises
    ------
    InputError
    """
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError):
        raise InputError(
            f"the dask scheduler at {address} has no workers (waited {_seconds(timeout)}); "
            f"start some with `dask worker {address}`, or raise --connect-timeout"
        ) from None
    from importlib.metadata import version  # noqa: PLC0415

    mine = version("cubepipe")
    absolute = [os.path.abspath(p) for p in inputs if not glob.has_magic(p)]
    marker = None
    if output is not None:
        parent = os.path.dirname(os.path.abspath(output))
        if os.path.isdir(parent):
            marker = os.path.join(parent, f".cubepipe-visible-{uuid.uuid4().hex}")
            Path(marker).touch()
    try:
        answers = client.run(_worker_probe(), absolute, marker, on_error="return")
    finally:
        if marker is not None:
            Path(marker).unlink(missing_ok=True)
    for worker, got in sorted(answers.items()):
        if isinstance(got, BaseException):
            raise InputError(
                f"dask worker {worker} of {address} could not run cubepipe's start-up check "
                f"({type(got).__name__}: {got}); check the workers' Python environment"
            )
        if got["version"] is None:
            raise InputError(
                f"dask worker {worker} of {address} cannot import cubepipe ({got['error']}); "
                f"install cubepipe {mine} in the workers' environment"
            )
        if got["version"] != mine:
            raise InputError(
                f"dask worker {worker} of {address} runs cubepipe {got['version']}, this "
                f"process {mine}; install the same version on the workers"
            )
        if got["missing"]:
            raise InputError(
                f"dask worker {worker} of {address} (working directory {got['cwd']}) cannot "
                f"see {got['missing'][0]}; the workers must share this file system (paths "
                "are used as this process sees them), or use object storage"
            )
