"""Progress of long dask computations: a bar on a terminal, plain lines otherwise.

Used as a context manager around the computations of one command (the CLI does this
unless ``--quiet``). It counts finished tasks through dask's local-scheduler callbacks,
so it reports threaded runs; on a ``dask.distributed`` cluster the dashboard shows
progress instead (its link is printed when the cluster starts).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from dask.callbacks import Callback

__all__ = ["Progress"]

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
