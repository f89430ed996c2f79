"""A dask cluster as users start one elsewhere: `dask scheduler` and `dask worker` as
subprocesses on 127.0.0.1, each from its own working directory (shared by the remote
cluster and object storage tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def _start(
    args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _address(scheduler_file: Path, proc: subprocess.Popen, log: Path) -> str:
    import json  # noqa: PLC0415

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if scheduler_file.exists():
            try:
                return json.loads(scheduler_file.read_text())["address"]
            except ValueError:
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"dask scheduler did not start: {log.read_text()[-2000:]}")


def cluster(
    tmp: Path,
    worker_prefix: list[str],
    worker_cmd: list[str],
    worker_env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Start a scheduler and one worker, each in its own directory under ``tmp`` (the
    worker with ``worker_env`` instead of this process's environment, if given)."""
    for d in ("scheduler", "worker"):
        (tmp / d).mkdir()
    sfile = tmp / "scheduler.json"
    sched = _start(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sfile)],
        tmp / "scheduler",
        tmp / "scheduler.log",
    )  # fmt: skip
    try:
        address = _address(sfile, sched, tmp / "scheduler.log")
        worker = _start(
            [*worker_prefix, *worker_cmd, address, "--nthreads", "1", "--host", "127.0.0.1",
             "--no-dashboard", "--memory-limit", "0", "--no-nanny"],
            tmp / "worker",
            tmp / "worker.log",
            worker_env,
        )  # fmt: skip
        try:
            yield address
        finally:
            _stop(worker)
    finally:
        _stop(sched)
