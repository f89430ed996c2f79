"""``--scheduler ADDRESS`` that is not a dask scheduler, and ``--memory-limit`` too small
for a worker: one line, exit 2, quickly, and no cluster started.

The servers are threads on 127.0.0.1 (an ephemeral port) that stop by themselves: one
accepts connections and never says anything, one answers like an HTTP server. Before the
fix the first hung forever (distributed reads the handshake without a timeout) and the
second made distributed allocate ``b"HTTP/1.1"`` read as a length: ~3.5 EiB.
"""

from __future__ import annotations

import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cubepipe.pipeline import scheduling
from cubepipe.pipeline.scheduling import MIN_WORKER_MEMORY, check_memory_limit

pytest.importorskip("distributed")

#: The servers stop (and close their connections) after this many seconds, whatever
#: happens, so a client that would wait forever fails instead.
SERVER_LIFETIME = 20.0


def _serve(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """Listen on 127.0.0.1; run ``answer(conn)`` for each connection; yield the address."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def loop() -> None:
        end = time.monotonic() + SERVER_LIFETIME
        while not stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            answer(conn)
        srv.close()
        for conn in conns:  # a client still waiting gets EOF instead of hanging forever
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never sends a byte."""
    yield from _serve(lambda conn: None)


def _http(conn: socket.socket) -> None:
    conn.settimeout(0.2)  # read what the client sends, if anything, then answer
    try:
        conn.recv(4096)
    except TimeoutError:
        pass
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")


@pytest.fixture
def http_server() -> Iterator[str]:
    """Answers every connection like a web server (a dask dashboard, say)."""
    yield from _serve(_http)


def _one_error_line(r) -> str:
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("cubepipe: error: "), lines[0]
    return lines[0]


def test_a_scheduler_that_never_answers_fails_within_the_connect_timeout(
    cli, small_store: Path, silent_server: str
) -> None:
    t0 = time.monotonic()
    r = cli(
        "--quiet", "--scheduler", silent_server, "--connect-timeout", "2", "stats", str(small_store)
    )
    took = time.monotonic() - t0
    line = _one_error_line(r)
    assert f"could not connect to the dask scheduler at {silent_server} within 2 s" in line
    assert "raise --connect-timeout" in line
    assert 1.5 <= took < 10, took


def test_a_server_speaking_http_fails_fast_with_bounded_memory(
    cli, small_store: Path, http_server: str
) -> None:
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    t0 = time.monotonic()
    r = cli("--quiet", "--scheduler", http_server, "stats", str(small_store))  # default 30 s
    took = time.monotonic() - t0
    line = _one_error_line(r)
    assert f"could not connect to the dask scheduler at {http_server}" in line
    assert "another protocol" in line and "HTTP/1.1" in line and "8786" in line
    assert took < 5, took
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 200 * 1024, grown_kib


def test_nothing_listening_is_one_line(cli, small_store: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again: nothing listens there now
    r = cli("--quiet", "--scheduler", f"tcp://127.0.0.1:{port}", "stats", str(small_store))
    line = _one_error_line(r)
    assert f"127.0.0.1:{port}" in line and "scheduler is running" in line


def test_a_dask_handshake_passes_the_probe() -> None:
    """What a scheduler sends first (distributed's own framing of its handshake)
    passes; the same bytes cut short, or a length that is too large, do not."""
    from distributed.comm.tcp import _add_frames_header  # noqa: PLC0415
    from distributed.protocol.core import dumps  # noqa: PLC0415

    frames, _, _ = _add_frames_header(dumps({"compression": None, "python": (3, 11, 7)}))
    message = b"".join(bytes(f) for f in frames)
    assert struct.unpack_from("Q", message)[0] == len(message) - 8
    gen = _serve(lambda conn: conn.sendall(message))
    address = next(gen)
    try:
        scheduling.probe_scheduler(address, timeout=2)  # no error
    finally:
        gen.close()
    bad = message[:8] + b"\xff" * (len(message) - 8)
    gen = _serve(lambda conn: conn.sendall(bad))
    address = next(gen)
    try:
        with pytest.raises(scheduling.InputError, match="another protocol"):
            scheduling.probe_scheduler(address, timeout=2)
    finally:
        gen.close()


@pytest.mark.parametrize("limit", ["50MB", "300MiB"])
def test_a_memory_limit_below_what_a_worker_needs_is_refused_before_a_cluster_starts(
    cli, small_store: Path, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    import distributed  # noqa: PLC0415

    def no_cluster(*args, **kwargs):
        raise AssertionError("a LocalCluster was started")

    monkeypatch.setattr(distributed, "LocalCluster", no_cluster)
    r = cli("--quiet", "--scheduler", "local", "--memory-limit", limit, "stats", str(small_store))
    line = _one_error_line(r)
    assert f"--memory-limit {limit} is below the minimum a worker needs (400 MiB" in line
    assert "raise it" in line


def test_the_minimum_worker_memory() -> None:
    assert MIN_WORKER_MEMORY == 400 * 2**20
    assert check_memory_limit("400MiB", scheduler="local") == "400MiB"
    assert check_memory_limit("1GB", scheduler="local") == "1GB"
    assert check_memory_limit("50MB") == "50MB"  # only local workers use it
    with pytest.raises(scheduling.InputError, match="below the minimum"):
        check_memory_limit("399MiB", scheduler="local")
    with pytest.raises(scheduling.InputError, match="below the minimum"):
        with scheduling.scheduler("local", memory_limit="100MB"):
            pass
