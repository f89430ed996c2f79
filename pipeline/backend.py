"""Compute devices: NumPy on the CPU or CuPy on a GPU. The only module that imports CuPy.

Algorithms never branch on the device. They take ``xp = array_namespace(x)`` from their
input and call :func:`fft_module` / :func:`ndimage_module` for the SciPy-shaped modules
that match it. This module decides which device a run uses (:func:`resolve_device`) and
moves dask arrays' chunks to it and back (:func:`to_device`, :func:`to_host`), keeping
``meta`` so dask never has to guess the chunk type.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
from array_api_compat import array_namespace as _array_namespace

from cubepipe.storage.errors import DeviceError, InputError

__all__ = [
    "DEVICE_ENV",
    "Device",
    "array_module",
    "array_namespace",
    "device_constant",
    "device_task",
    "is_device_array",
    "fft_module",
    "gpu_libraries",
    "gpu_status",
    "linalg_module",
    "matmul",
    "ndimage_module",
    "resolve_device",
    "to_device",
    "to_host",
]

#: Environment variable read when no device is given explicitly.
DEVICE_ENV = "CUBEPIPE_DEVICE"
DeviceName = Literal["cpu", "gpu"]


def _import_cupy() -> ModuleType:
    import cupy  # noqa: PLC0415  (the one place CuPy is imported)

    return cupy


def gpu_status() -> tuple[bool, str]:
    """Whether a GPU is usable through CuPy, and a one-line reason/description.

    Usable means CuPy imports, sees a device, and a tiny cuBLAS, cuFFT and cuSOLVER call
    each works (:func:`gpu_libraries`): a driver-only machine without the CUDA libraries
    (``pip install 'cubepipe[gpu]'`` brings them) is reported here, not at the first FFT.
    """
    try:
        cupy = _import_cupy()
    except ImportError:
        return False, "CuPy is not installed (pip install 'cubepipe[gpu]' for CUDA 12)"
    except Exception as exc:  # a broken CuPy install raises all sorts of things
        return False, f"CuPy failed to import ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device, driver too old
        return False, f"CuPy sees no CUDA device ({type(exc).__name__}: {exc})"
    if count < 1:
        return False, "CuPy sees no CUDA device"
    try:
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    except Exception:
        name = "GPU 0"
    broken = {lib: why for lib, why in gpu_libraries().items() if why}
    if broken:
        lib, why = next(iter(broken.items()))
        return False, (
            f"{name} found, but {', '.join(broken)} failed ({lib}: {why}); install the CUDA "
            "libraries: pip install 'cubepipe[gpu]' (CUDA 12) or 'cubepipe[gpu13]' (CUDA 13)"
        )
    return True, f"{name} (CuPy {cupy.__version__})"


_LIBRARIES: dict[str, str] | None = None


def gpu_libraries() -> dict[str, str]:
    """Run one tiny call of each CUDA library cubepipe uses on GPU 0 and compare it with
    NumPy: ``{"cuBLAS": "", "cuFFT": "", "cuSOLVER": "", "kernels": ""}``, an empty
    string where it works, else why not (one line). Cached for the process. Assumes CuPy
    imports and sees a device (see :func:`gpu_status`)."""
    global _LIBRARIES
    if _LIBRARIES is not None:
        return _LIBRARIES
    cupy = _import_cupy()
    host = np.array([[4.0, 2.0], [2.0, 3.0]])
    checks: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
        "kernels": (lambda a: a * 2.0 + 1.0, lambda a: a * 2.0 + 1.0),  # NVRTC-built
        "cuBLAS": (lambda a: a @ a, lambda a: a @ a),
        "cuFFT": (lambda a: cupy.fft.rfft(a, axis=1), lambda a: np.fft.rfft(a, axis=1)),
        "cuSOLVER": (cupy.linalg.cholesky, np.linalg.cholesky),
    }
    out: dict[str, str] = {}
    for lib, (on_gpu, on_cpu) in checks.items():
        try:
            got = on_gpu(cupy.asarray(host)).get()
            ok = np.allclose(got, on_cpu(host), rtol=1e-12, atol=1e-12)
            out[lib] = "" if ok else "wrong result"
        except Exception as exc:  # a missing library raises ImportError, OSError, CUDA errors
            out[lib] = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    _LIBRARIES = out
    return out


@dataclass(frozen=True)
class Device:
    """The device a run computes on.

    Attributes
    ----------
    name
        ``"cpu"`` or ``"gpu"``.
    reason
        One line saying why this device was chosen (printed by the CLI for ``auto``).
    """

    name: DeviceName
    reason: str

    @property
    def xp(self) -> ModuleType:
        """The array module of this device: :mod:`numpy` or :mod:`cupy`."""
        return _import_cupy() if self.name == "gpu" else np

    def __str__(self) -> str:
        return self.name


def resolve_device(requested: str | None = None) -> Device:
    """Turn ``auto|cpu|gpu`` (default: env ``CUBEPIPE_DEVICE``, else ``auto``) into a Device.

    ``auto`` picks the GPU when CuPy imports and sees a device, else the CPU, and says
    which in :attr:`Device.reason`. ``gpu`` without a usable GPU raises
    :class:`~cubepipe.storage.errors.DeviceError`; it never falls back silently.
    """
    source = "--device"
    if requested is None:
        requested = os.environ.get(DEVICE_ENV) or "auto"
        source = DEVICE_ENV if os.environ.get(DEVICE_ENV) else "default"
    choice = requested.strip().lower()
    if choice not in ("auto", "cpu", "gpu"):
        raise InputError(f"{source}: unknown device {requested!r}; expected auto, cpu or gpu")
    if choice == "cpu":
        return Device("cpu", f"CPU (NumPy {np.__version__}), as requested")
    ok, detail = gpu_status()
    if choice == "gpu":
        if not ok:
            raise DeviceError(
                f"{source} gpu was requested but no GPU is usable: {detail}; "
                "use --device cpu (or auto) to run on the CPU"
            )
        return Device("gpu", f"GPU {detail}, as requested")
    if ok:
        return Device("gpu", f"auto: using GPU {detail}")
    return Device("cpu", f"auto: using CPU (NumPy {np.__version__}); no GPU: {detail}")


def array_namespace(*arrays: Any) -> Any:
    """The array-API namespace shared by ``arrays`` (NumPy's or CuPy's); mixing fails."""
    try:
        return _array_namespace(*arrays)
    except TypeError as exc:
        raise InputError(f"arrays from different libraries cannot be mixed: {exc}") from exc


def array_module(a: Any) -> ModuleType:
    """NumPy or CuPy itself, for the ``out=`` arguments the array-API wrappers lack."""
    if isinstance(a, np.ndarray):
        return np
    return importlib.import_module(type(a).__module__.split(".")[0])


def matmul(a: Any, b: Any) -> Any:
    """``a @ b`` of two 2-D arrays (NumPy or CuPy) that lets other threads run meanwhile.

    Chunk kernels run in several dask threads at once. NumPy's ``matmul`` keeps the GIL
    while it copies an operand that is not contiguous (a transposed or column-sliced
    strip), which serialised the co-moment kernel of PCA (2 threads no faster than 1);
    ``tensordot`` hands both to BLAS as they are, without the GIL. The product is the same.
    """
    return array_module(a).tensordot(a, b, axes=1)


def _is_cupy_namespace(xp: Any) -> bool:
    return "cupy" in getattr(xp, "__name__", "")


def fft_module(xp: Any) -> ModuleType:
    """``scipy.fft`` for NumPy arrays, ``cupyx.scipy.fft`` for CuPy arrays."""
    if _is_cupy_namespace(xp):
        import cupyx.scipy.fft as cufft  # noqa: PLC0415

        return cufft
    import scipy.fft  # noqa: PLC0415

    return scipy.fft


def ndimage_module(xp: Any) -> ModuleType:
    """``scipy.ndimage`` for NumPy arrays, ``cupyx.scipy.ndimage`` for CuPy arrays."""
    if _is_cupy_namespace(xp):
        import cupyx.scipy.ndimage as cundi  # noqa: PLC0415

        return cundi
    import scipy.ndimage  # noqa: PLC0415

    return scipy.ndimage


def linalg_module(xp: Any) -> ModuleType:
    """``scipy.linalg`` for NumPy arrays, ``cupyx.scipy.linalg`` for CuPy arrays (only the
    names both have: ``solve_triangular``, ``lu_factor``, ``lu_solve``)."""
    if _is_cupy_namespace(xp):
        import cupyx.scipy.linalg as culinalg  # noqa: PLC0415

        return culinalg
    import scipy.linalg  # noqa: PLC0415

    return scipy.linalg


def _asnumpy(block: Any) -> np.ndarray:
    """A device chunk copied to the host, into page-locked (pinned) memory from CuPy's
    pinned pool: the copy runs at the bus's full speed (a pageable buffer is staged
    through a driver bounce buffer), on this thread's stream."""
    if isinstance(block, np.ndarray) or not hasattr(block, "get"):
        return block
    import cupyx  # noqa: PLC0415  (only reached with CuPy chunks)

    with _thread_stream():
        block = array_module(block).ascontiguousarray(block)  # no copy if it already is
        out = cupyx.empty_pinned(block.shape, dtype=block.dtype)
        return block.get(out=out)


def _to_xp(block: Any, *, xp: ModuleType) -> Any:
    if is_device_array(block):
        return block
    with _thread_stream():
        return xp.asarray(block)


def to_device(data: Any, device: Device | str) -> Any:
    """Move every chunk of a dask array (or of a DataArray, or of each pixel variable of a
    Dataset: those with ``y`` and ``x`` dims) to ``device``, lazily. Non-dask data, and a
    Dataset's small fitted variables (``stats_*``, ``pca_*``, ``ae_*``, over ``band`` or
    ``component``), stay where they are: they are read on the host.

    On the CPU this is the identity for NumPy chunks and copies CuPy chunks back.
    """
    import dask.array as da  # noqa: PLC0415  (on use: `cubepipe --help` imports no dask.array)
    import xarray as xr  # noqa: PLC0415

    dev = device if isinstance(device, Device) else resolve_device(device)
    if dev.name == "cpu":
        return to_host(data)
    if isinstance(data, xr.Dataset):
        moved = {
            k: to_device(v, dev) for k, v in data.data_vars.items() if {"y", "x"} <= set(v.dims)
        }
        return data.assign(moved)
    if isinstance(data, xr.DataArray):
        return data.copy(data=to_device(data.data, dev))
    if not isinstance(data, da.Array):
        return data
    xp = dev.xp
    return da.map_blocks(
        _to_xp,
        data,
        xp=xp,
        dtype=data.dtype,
        meta=xp.empty((0,) * data.ndim, dtype=data.dtype),
        token="cubepipe-to-gpu",
    )


def to_host(data: Any) -> Any:
    """Bring every chunk of a dask array (or Dataset/DataArray) back to NumPy, lazily."""
    import dask.array as da  # noqa: PLC0415  (on use, as in to_device)
    import xarray as xr  # noqa: PLC0415

    if isinstance(data, xr.Dataset):
        return data.map(to_host, keep_attrs=True)
    if isinstance(data, xr.DataArray):
        return data.copy(data=to_host(data.data))
    if not isinstance(data, da.Array) or isinstance(data._meta, np.ndarray):
        return data
    return da.map_blocks(
        _asnumpy,
        data,
        dtype=data.dtype,
        meta=np.empty((0,) * data.ndim, dtype=data.dtype),
        token="cubepipe-to-cpu",
    )


# -- device chunk kernels: constants, streams ---------------------------------------------


def is_device_array(a: Any) -> bool:
    """Whether ``a`` is a CuPy (device) array (checked without importing CuPy)."""
    return not isinstance(a, np.ndarray) and type(a).__module__.split(".")[0] == "cupy"


_CONSTANTS: dict[tuple[str, tuple[int, ...], bytes], Any] = {}
_CONSTANTS_LOCK = threading.Lock()


def device_constant(like: Any, value: Any, dtype: Any = np.float64) -> Any:
    """``value`` (small, host) as an array of ``like``'s library: NumPy on the host; on
    the GPU uploaded once per process and reused by every later chunk (fitted means,
    scales, projection matrices). Kernels must not write into it."""
    host = np.ascontiguousarray(np.asarray(value, dtype=dtype))
    if not is_device_array(like):
        return host
    key = (host.dtype.str, host.shape, host.tobytes())
    got = _CONSTANTS.get(key)
    if got is None:
        cupy = _import_cupy()
        got = cupy.asarray(host)
        cupy.cuda.get_current_stream().synchronize()  # visible to every thread's stream
        with _CONSTANTS_LOCK:
            if len(_CONSTANTS) >= 256:
                _CONSTANTS.clear()
            _CONSTANTS[key] = got
    return got


_THREAD = threading.local()


@contextlib.contextmanager
def _thread_stream() -> Iterator[None]:
    """Run on this thread's own non-blocking CUDA stream (made once per thread), and wait
    for it at the end: dask threads then overlap one chunk's copies with another's
    kernels, and a result handed to another task is complete."""
    cupy = _import_cupy()
    stream = getattr(_THREAD, "stream", None)
    if stream is None:
        stream = _THREAD.stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        yield
    stream.synchronize()


def device_task(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a chunk kernel: given a device array it runs on the thread's stream (see
    :func:`_thread_stream`); NumPy chunks run it unchanged."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not any(is_device_array(a) for a in args):
            return fn(*args, **kwargs)
        with _thread_stream():
            return fn(*args, **kwargs)

    return run
