"""Shared fixtures: small real stores on disk, the CLI as a subprocess, GPU skipping."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

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


def _raise_on_compute(dsk, keys, **kwargs):  # noqa: ANN001, ANN202 (dask scheduler signature)
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


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None):
    """Run the real console script; returns CompletedProcess with text stdout/stderr."""
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

    async def get(self, key, prototype=None, byte_range=None):  # noqa: ANN001, ANN201
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
    return run_cli


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
