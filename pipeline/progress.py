"""Progress of long dask computations: a bar on a terminal, plain lines otherwise.

Used as a context manager around the computations of one command (the CLI does this
unless ``--quiet``). It counts finished tasks through dask's local-scheduler callbacks
for threaded runs (:class:`Progress`), and asks the scheduler of a ``dask.distributed``
cluster how many tasks are left (:class:`ClusterProgress`); the cluster's dashboard link
is printed when it starts or is joined.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, TextIO

from dask.callbacks import Callback

__all__ = ["ClusterProgress", "Progress"]

#: Seconds between plain (non-terminal) progress lines; env CUBEPIPE_PROGRESS_INTERVAL.
DEFAULT_INTERVAL = 5.0
_BAR = 30


class Progress(Callback):
    """Report finished/total tasks of every dask computation run inside the context.

    Parameters
    ----------
    label
        What is running (``standardize``), printed at the start of each line.
    stream
        Where to write (stderr by default).
    interval
        Seconds between plain lines when ``stream`` is not a terminal.
    """

    def __init__(
        self, label: str, *, stream: TextIO | None = None, interval: float | None = None
    ) -> None:
        super().__init__()
        self.label = label
        self.stream = stream or sys.stderr
        env = os.environ.get("CUBEPIPE_PROGRESS_INTERVAL")
        self.interval = float(env) if interval is None and env else (interval or DEFAULT_INTERVAL)
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0 = 0.0
        self._last = 0.0
        self._total = 0
        self._done = 0

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        self._t0 = self._last = time.monotonic()
        self._total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._done = len(state["finished"])

    def _posttask(
        self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any
    ) -> None:
        self._done += 1
        now = time.monotonic()
        if self.tty and now - self._last >= 0.1:
            self._draw(now)
        elif not self.tty and now - self._last >= self.interval:
            self._line(now)

    def _finish(self, dsk: Any, state: dict[str, Any], errored: bool) -> None:
        if errored or self._total == 0:
            if self.tty:
                self.stream.write("\n")
            return
        self._done = self._total
        now = time.monotonic()
        if self.tty:
            self._draw(now)
            self.stream.write("\n")
        else:
            self._line(now)
        self.stream.flush()

    def _fraction(self) -> float:
        return min(self._done / self._total, 1.0) if self._total else 1.0

    def _draw(self, now: float) -> None:
        f = self._fraction()
        filled = int(f * _BAR)
        bar = "#" * filled + "-" * (_BAR - filled)
        self.stream.write(f"\r{self.label} [{bar}] {f:6.1%}  {now - self._t0:6.1f} s")
        self.stream.flush()
        self._last = now

    def _line(self, now: float) -> None:
        self.stream.write(
            f"cubepipe: {self.label} {self._fraction():.0%} ({self._done}/{self._total} tasks, "
            f"{now - self._t0:.1f} s)\n"
        )
        self.stream.flush()
        self._last = now


# Run on the scheduler of a distributed cluster (sent by value: nothing of cubepipe is
# imported there): how many tasks are not finished yet.
_COUNT_SOURCE = """
def count(dask_scheduler=None):
    busy = ("waiting", "processing", "queued", "no-worker")
    return sum(1 for ts in dask_scheduler.tasks.values() if ts.state in busy)
"""


def _remote_counter() -> Any:
    namespace: dict[str, Any] = {"__name__": "cubepipe_progress_probe"}
    exec(_COUNT_SOURCE, namespace)
    return namespace["count"]


class ClusterProgress:
    """Progress of the work on a ``dask.distributed`` cluster, with :class:`Progress`'s
    rules (a bar on a terminal, a plain line every ``interval`` seconds otherwise).

    A thread asks the scheduler how many tasks are still to run; the most seen is taken
    as the total, so the fraction is of the work submitted so far by everyone on the
    cluster (on a shared cluster, other clients' tasks count too).
    """

    def __init__(
        self,
        client: Any,
        label: str,
        *,
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.client = client
        self.bar = Progress(label, stream=stream, interval=interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cubepipe-progress")
        self._count = _remote_counter()

    def __enter__(self) -> ClusterProgress:
        self.bar._t0 = self.bar._last = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        b = self.bar
        if exc[0] is not None:
            if b.tty and b._total:
                b.stream.write("\n")
            return
        b._done = b._total  # finished: what was seen, or nothing if it was too quick
        if b.tty:
            b._draw(time.monotonic())
            b.stream.write("\n")
        else:
            b._line(time.monotonic())
        b.stream.flush()

    def _run(self) -> None:
        b = self.bar
        step = 0.2 if b.tty else min(b.interval, 1.0)
        while not self._stop.wait(step):
            try:
                left = int(self.client.run_on_scheduler(self._count))
            except Exception:  # the cluster is going away: the command reports that
                return
            if left == 0 and b._total == 0:
                continue
            b._total = max(b._total, left)
            b._done = b._total - left
            now = time.monotonic()
            if b.tty and now - b._last >= 0.1:
                b._draw(now)
            elif not b.tty and now - b._last >= b.interval:
                b._line(now)
