"""Shared fixtures: small real stores on disk, the CLI (in-process or as a console
script), GPU skipping."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import dask
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, settings
from zarr.storage import LocalStore

from cubepipe.pipeline.backend import gpu_status
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import open_cube, write_cube
from cubepipe.storage.chunkio import ChunkLayout

settings.register_profile(
    "cubepipe",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("cubepipe")

GPU_OK, GPU_REASON = gpu_status()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if GPU_OK:
        return
    skip = pytest.mark.skip(reason=f"no GPU: {GPU_REASON}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def small_cube() -> xr.Dataset:
    """A lazily generated 15 x 200 x 240 signed-float cube with a NaN disc."""
    return make_cube("small", seed=1, chunks={"y": 64, "x": 96})


@pytest.fixture
def small_store(tmp_path: Path, small_cube: xr.Dataset) -> Path:
    """``small_cube`` written as a complete store."""
    return write_cube(small_cube, tmp_path / "small.zarr", op="fixture", chunks={"y": 64, "x": 96})


def _raise_on_compute(dsk, keys, **kwargs):
    raise AssertionError(f"a dask computation ran during graph construction (keys {keys!r})")


@contextlib.contextmanager
def _no_compute_context():
    with dask.config.set(scheduler=_raise_on_compute):
        yield


@pytest.fixture
def no_compute():
    """``with no_compute:`` fails the test if any dask computation runs inside."""
    return _no_compute_context()


def cubepipe_exe() -> str:
    exe = Path(sys.executable).with_name("cubepipe")
    return str(exe) if exe.exists() else "cubepipe"


@dataclass
class CliResult:
    """What a CLI run gave: the fields of ``subprocess.CompletedProcess`` tests read."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def _fresh_process_warnings() -> None:
    """Warning filters and display as in a new interpreter (pytest records warnings
    instead of printing them): shown on stderr, once per place, deprecations hidden."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> CliResult:
    """Run the CLI's ``main`` (what the console script calls) in this process, with
    stdout/stderr captured; returns its exit code and output.

    In-process because a fresh interpreter costs ~2 s of imports, which ~100 CLI runs
    would spend over and over. Tests of what only a separate process shows (the console
    script itself, SIGKILL, a terminal, worker processes, an unimportable extra) use
    :func:`run_cli_process`.
    """
    from cubepipe.pipeline.cli import main  # noqa: PLC0415

    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, {"CUBEPIPE_DEVICE": "", **(env or {})}),
        contextlib.chdir(cwd or os.getcwd()),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(),
    ):
        _fresh_process_warnings()
        code = main(list(args))
    return CliResult(list(args), code, out.getvalue(), err.getvalue())


def run_cli_process(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real console script in a new process; CompletedProcess with text output."""
    full_env = {**os.environ, "CUBEPIPE_DEVICE": "", **(env or {})}
    return subprocess.run(
        [cubepipe_exe(), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=300,
    )


def _count_direct_reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    reads: Counter = Counter()
    read_chunk = ChunkLayout.read_chunk

    def counting(self: ChunkLayout, idx: tuple[int, ...]) -> np.ndarray:
        reads[f"{Path(self.root).name}/c/" + "/".join(map(str, idx))] += 1
        return read_chunk(self, idx)

    monkeypatch.setattr(ChunkLayout, "read_chunk", counting)
    return reads


@pytest.fixture
def direct_reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts the chunk files storage.chunkio reads (the path ``open_cube`` takes for
    cubepipe's own stores), keyed like zarr store keys: ``"cube/c/0/1/2"``."""
    return _count_direct_reads(monkeypatch)


class CountingStore(LocalStore):
    """A real LocalStore that counts reads of every key."""

    reads: Counter

    async def get(self, key, prototype=None, byte_range=None):
        self.reads[key] += 1
        return await super().get(key, prototype=prototype, byte_range=byte_range)


@pytest.fixture(params=["zarr-store", "direct"])
def counting_open(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """``open(path) -> (dataset, reads)`` counting every chunk read, once through
    zarr-python (a counting LocalStore under ``xarray.open_zarr``) and once through
    ``open_cube``'s direct chunk reads."""

    def through_zarr(path: Path) -> tuple[xr.Dataset, Counter]:
        store = CountingStore(str(path), read_only=True)
        store.reads = Counter()
        return xr.open_zarr(store, chunks={}, consolidated=True), store.reads

    def direct(path: Path) -> tuple[xr.Dataset, Counter]:
        reads = _count_direct_reads(monkeypatch)
        return open_cube(path), reads

    return through_zarr if request.param == "zarr-store" else direct


def cube_chunk_reads(reads: Counter) -> dict[str, int]:
    return {k: v for k, v in reads.items() if k.startswith("cube/c/")}


@pytest.fixture
def cli():
    """The CLI run in-process (:func:`run_cli`)."""
    return run_cli


@pytest.fixture
def cli_process():
    """The console script in a new process (:func:`run_cli_process`)."""
    return run_cli_process


def signed_float_block(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """float32 data with every awkward value: negatives, NaN, +-0, subnormals, +-3.4e38."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1000, size=shape).astype(np.float32)
    flat = a.reshape(-1)
    specials = np.array(
        [np.nan, -0.0, 0.0, 1e-45, -1e-45, 1.17e-38, -3.4028235e38, 3.4028235e38, -1.5],
        dtype=np.float32,
    )
    flat[: min(flat.size, specials.size)] = specials[: flat.size]
    return a
