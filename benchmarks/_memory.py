"""Memory of a whole process tree: a ``cubepipe`` command and the dask processes it starts.

:func:`run_sampled` runs a command and samples, every ``interval`` seconds, the resident
memory of every process in its tree (``/proc/PID/status`` via psutil's process list):
the main process (the cubepipe client; with ``--scheduler local`` also the scheduler and
the nannies, which live in it), the dask worker processes (multiprocessing ``spawn``
children, or forked copies of the main process) and any helper (multiprocessing's resource tracker). Kernel high-water marks
(``VmHWM``) catch peaks between samples for each process; the tree total is the sum at
one instant. dask's memory events are read from the command's stderr (pause, restart)
and from its scratch directory (spilled bytes).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = ["TreeMemory", "run_sampled"]

_MB = 1024 * 1024


@dataclass
class TreeMemory:
    """Peaks over one run (MiB) and what dask said about memory."""

    returncode: int
    seconds: float
    tree_peak_mb: float = 0.0  # sum of VmRSS over the tree, same instant
    tree_peak_anon_mb: float = 0.0  # sum of RssAnon over the tree, same instant
    main_peak_mb: float = 0.0  # VmHWM of the main process (client, scheduler, nanny)
    main_peak_anon_mb: float = 0.0
    worker_peak_mb: float = 0.0  # largest VmHWM of a worker process
    worker_peak_anon_mb: float = 0.0
    helpers_peak_mb: float = 0.0  # other children (resource tracker)
    worker_pids: list[int] = field(default_factory=list)
    spilled_peak_mb: float = 0.0  # bytes in the dask scratch directory
    paused: int = 0  # "Pausing worker" warnings
    restarts: int = 0  # workers the nanny killed or that died
    unmanaged_warnings: int = 0
    samples: int = 0
    stderr: str = ""

    def as_row(self) -> dict[str, Any]:
        row = {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}
        row.pop("stderr")
        row["workers_seen"] = len(row.pop("worker_pids"))
        return row


def _status(proc: psutil.Process) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{proc.pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        return {}
    return out


def _role(proc: psutil.Process, root: int) -> str:
    if proc.pid == root:
        return "main"
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if "spawn_main" in cmd:
        return "worker"
    try:  # a forked worker (scheduling.worker_start_method: fork): a copy of the main
        forked = proc.ppid() == root and proc.cmdline() == psutil.Process(root).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    return "worker" if forked else "helper"


def _dir_bytes(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def run_sampled(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    interval: float = 0.05,
    scratch: Path | None = None,
    timeout: float = 3600,
) -> TreeMemory:
    """Run ``argv`` to completion and measure its process tree (see the module docstring).

    ``scratch`` is the dask temporary directory given to the command (env
    ``DASK_TEMPORARY_DIRECTORY``); its size is sampled each second as spilled bytes.
    """
    full_env = {**os.environ, **(env or {})}
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        full_env["DASK_TEMPORARY_DIRECTORY"] = str(scratch)
    err_path = Path(cwd or ".") / f".stderr-{os.getpid()}-{time.monotonic_ns()}.txt"
    t0 = time.perf_counter()
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=full_env, stdout=subprocess.DEVNULL, stderr=err
        )
        res = TreeMemory(returncode=0, seconds=0.0)
        root = psutil.Process(proc.pid)
        hwm: dict[int, tuple[str, int]] = {}
        spill = _SpillSampler(scratch)
        spill.start()
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            tree = anon = 0
            for p in procs:
                st = _status(p)
                if not st:
                    continue
                role = hwm[p.pid][0] if p.pid in hwm else _role(p, proc.pid)
                hwm[p.pid] = (role, st.get("VmHWM", 0))
                tree += st.get("VmRSS", 0)
                anon += st.get("RssAnon", 0)
                if role == "main":
                    res.main_peak_anon_mb = max(res.main_peak_anon_mb, st.get("RssAnon", 0) / _MB)
                elif role == "worker":
                    res.worker_peak_anon_mb = max(
                        res.worker_peak_anon_mb, st.get("RssAnon", 0) / _MB
                    )
            res.tree_peak_mb = max(res.tree_peak_mb, tree / _MB)
            res.tree_peak_anon_mb = max(res.tree_peak_anon_mb, anon / _MB)
            res.samples += 1
            time.sleep(interval)
        if proc.poll() is None:
            proc.kill()
        res.returncode = proc.wait()
        spill.stop()
    res.seconds = time.perf_counter() - t0
    res.stderr = err_path.read_text(errors="replace")
    err_path.unlink()
    for role, peak in hwm.values():
        if role == "main":
            res.main_peak_mb = max(res.main_peak_mb, peak / _MB)
        elif role == "worker":
            res.worker_peak_mb = max(res.worker_peak_mb, peak / _MB)
        elif role == "helper":
            res.helpers_peak_mb = max(res.helpers_peak_mb, peak / _MB)
    res.worker_pids = sorted(pid for pid, (role, _) in hwm.items() if role == "worker")
    res.spilled_peak_mb = spill.peak / _MB
    res.paused = len(re.findall(r"Pausing worker", res.stderr))
    res.unmanaged_warnings = len(re.findall(r"Unmanaged memory use is high", res.stderr))
    res.restarts = len(re.findall(r"exceeded \d+% memory budget|was killed by", res.stderr))
    return res


class _SpillSampler(threading.Thread):
    def __init__(self, path: Path | None) -> None:
        super().__init__(daemon=True)
        self.path, self.peak = path, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(1.0):
            self.peak = max(self.peak, _dir_bytes(self.path))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
