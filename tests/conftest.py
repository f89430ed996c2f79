"""Shared fixtures: small real stores on disk, the CLI as a subprocess, GPU skipping."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, settings

from cubepipe.pipeline.backend import gpu_status
from cubepipe.pipeline.synthetic import make_cube
from cubepipe.storage import write_cube

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
