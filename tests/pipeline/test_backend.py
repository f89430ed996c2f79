"""Device resolution and moving chunks between host and device."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from cubepipe.pipeline.backend import (
    DEVICE_ENV,
    array_namespace,
    fft_module,
    gpu_status,
    ndimage_module,
    resolve_device,
    to_device,
    to_host,
)
from cubepipe.storage import DeviceError, InputError, open_cube, write_cube

GPU_OK, _ = gpu_status()
needs_no_gpu = pytest.mark.skipif(GPU_OK, reason="this machine has a GPU")


def test_cpu_is_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    dev = resolve_device("cpu")
    assert dev.name == "cpu" and dev.xp is np
    assert "as requested" in dev.reason


@needs_no_gpu
def test_auto_without_gpu_says_it_chose_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    dev = resolve_device(None)
    assert dev.name == "cpu"
    assert dev.reason.startswith("auto: using CPU") and "no GPU" in dev.reason


@needs_no_gpu
def test_gpu_without_gpu_is_an_error_not_a_fallback() -> None:
    with pytest.raises(DeviceError, match="no GPU is usable.*--device cpu"):
        resolve_device("gpu")


@needs_no_gpu
def test_env_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(DeviceError, match=DEVICE_ENV):
        resolve_device(None)
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device(None).name == "cpu"
    assert resolve_device("cpu").name == "cpu"  # explicit beats the environment


def test_unknown_device_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="expected auto, cpu or gpu"):
        resolve_device("tpu")
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(InputError, match=DEVICE_ENV):
        resolve_device(None)


def test_scipy_modules_for_numpy() -> None:
    import scipy.fft  # noqa: PLC0415
    import scipy.ndimage  # noqa: PLC0415

    xp = array_namespace(np.ones(3))
    assert fft_module(xp) is scipy.fft
    assert ndimage_module(xp) is scipy.ndimage


def test_to_host_and_cpu_device_keep_numpy_chunks(small_cube: xr.Dataset, no_compute) -> None:
    with no_compute:
        moved = to_device(small_cube, "cpu")
        back = to_host(moved)
    for ds in (moved, back):
        assert isinstance(ds["cube"].data, da.Array)
        assert type(ds["cube"].data._meta) is np.ndarray
        assert ds["cube"].dtype == np.float32
    assert moved["cube"].data is small_cube["cube"].data  # identity on the CPU


@pytest.mark.gpu
def test_gpu_round_trip_keeps_meta_and_values(small_cube: xr.Dataset, tmp_path: Path) -> None:
    import cupy  # noqa: PLC0415

    dev = resolve_device("gpu")
    assert dev.name == "gpu" and dev.xp is cupy
    on_gpu = to_device(small_cube, dev)
    assert isinstance(on_gpu["cube"].data._meta, cupy.ndarray)
    block = on_gpu["cube"].data.blocks[0, 0, 0].compute()
    assert isinstance(block, cupy.ndarray)
    xp = array_namespace(block)
    assert fft_module(xp).__name__ == "cupyx.scipy.fft"
    back = to_host(on_gpu)
    assert isinstance(back["cube"].data._meta, np.ndarray)
    np.testing.assert_array_equal(back["cube"].values, small_cube["cube"].values)
    # A store written straight from GPU chunks holds the same bits.
    path = write_cube(on_gpu, tmp_path / "gpu.zarr", device="gpu")
    np.testing.assert_array_equal(open_cube(path)["cube"].values, small_cube["cube"].values)


@pytest.mark.gpu
def test_auto_picks_the_gpu_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    dev = resolve_device("auto")
    assert dev.name == "gpu" and dev.reason.startswith("auto: using GPU")
