"""Convolution of one padded block by one kernel: direct, or through the real FFT.

Every function here takes a float64 block that already carries a halo of ``depth``
values on both sides of each filtered axis (added by ``dask.array.map_overlap`` or by
padding inside the block) and returns only the interior, so the result of a chunk does
not depend on how the plane was chunked.

- ``direct``: :func:`scipy.ndimage.convolve1d` passes for separable kernels (one per
  axis), :func:`scipy.ndimage.convolve` otherwise (``cupyx.scipy.ndimage`` on GPU).
- ``rfft``: ``rfftn`` of the block at a fast length (``next_fast_len(n, real=True)``),
  times the kernel's ``rfftn`` (cached per length and device), ``irfftn``, crop. The
  spectrum of real input is Hermitian, ``X[N - k] = conj(X[k])``, so ``rfftn`` computes
  only the ``N // 2 + 1`` non-redundant values along the last axis: about half the work
  and half the memory of a complex FFT (``cubepipe explain fft`` measures it). The
  circular wrap-around only reaches the halo, never the interior, so no extra padding
  is needed. ``fft`` is accepted as another name of ``rfft``.
"""

from __future__ import annotations

import functools
import inspect
from types import ModuleType
from typing import Any

from ..backend import array_namespace, fft_module, ndimage_module
from .kernels import Kernel, Taps

__all__ = [
    "DIRECT_MAX_COST",
    "canonical_method",
    "choose_method",
    "convolve_block",
    "convolve_padded",
    "crop",
]

#: ``auto`` convolves directly when a kernel costs at most this many multiply-adds per
#: value (separable: the sum of its 1-D lengths; else its nonzero taps), else by rfft.
#: Measured on 512 x 512 chunks with a 15-band float64 block: a 31-tap separable
#: Gaussian (62) costs the same either way; a 9 x 9 dense kernel (81) is faster by FFT.
DIRECT_MAX_COST = 64


def canonical_method(method: str) -> str:
    """``method`` with ``fft`` spelled ``rfft``: the input is real, so the FFT path is
    always the real one (``fft`` is the name earlier versions used)."""
    return "rfft" if method == "fft" else method


def choose_method(kernel: Kernel, method: str, *, masked: bool) -> tuple[str, str]:
    """``(method, reason)``: ``direct`` or ``rfft`` for ``method`` ``auto|direct|rfft``
    (or ``fft``, the same as ``rfft``)."""
    method = canonical_method(method)
    taps = [t for _, t in kernel.terms] if masked else [kernel.taps]
    cost = max(t.cost for t in taps)
    if method != "auto":
        return method, f"{method} as requested ({cost} multiply-adds per value direct)"
    if cost <= DIRECT_MAX_COST:
        return "direct", (
            f"auto: {cost} multiply-adds per value <= {DIRECT_MAX_COST}, direct is cheaper"
        )
    return "rfft", (
        f"auto: {cost} multiply-adds per value > {DIRECT_MAX_COST}, the real FFT is cheaper"
    )


def crop(a: Any, axes: tuple[int, ...], starts: Any, sizes: Any) -> Any:
    """``a[start:start + size]`` along each of ``axes``."""
    index = [slice(None)] * a.ndim
    for ax, s, n in zip(axes, starts, sizes, strict=True):
        index[ax] = slice(s, s + n)
    return a[tuple(index)]


def _interior(b: Any, axes: tuple[int, ...], depth: tuple[int, ...]) -> list[int]:
    return [b.shape[ax] - 2 * d for ax, d in zip(axes, depth, strict=True)]


def _on_device(xp: Any, taps: Taps, key: str, value: Any) -> Any:
    """``value`` (a NumPy array of ``taps``) as an array of ``xp``, cached per device."""
    k = (key, getattr(xp, "__name__", str(xp)))
    if k not in taps.cache:
        taps.cache[k] = xp.asarray(value)
    return taps.cache[k]


def convolve_padded(
    b: Any, taps: Taps, *, axes: tuple[int, ...], depth: tuple[int, ...], method: str
) -> Any:
    """Interior of ``taps * b`` along ``axes`` (``b`` padded by ``depth``), float64.

    Non-finite input spreads as in :func:`scipy.ndimage.convolve` with ``direct``, and
    over the whole block with ``rfft``: use :func:`convolve_block` for data with NaN.
    """
    xp = array_namespace(b)
    sizes = _interior(b, axes, depth)
    if canonical_method(method) == "rfft":
        return _fft(b, taps, axes, depth, sizes, xp)
    ndi = ndimage_module(xp)
    if taps.factors is not None and len(taps.factors) == len(axes):
        for i, (ax, d, n) in enumerate(zip(axes, depth, sizes, strict=True)):
            f = _on_device(xp, taps, f"factor{i}", taps.factors[i])
            b = crop(ndi.convolve1d(b, f, axis=ax, mode="constant"), (ax,), (d,), (n,))
        return b
    shape = [1] * b.ndim
    for i, ax in enumerate(axes):
        shape[ax] = taps.shape[i]
    w = xp.reshape(_on_device(xp, taps, "weights", taps.weights), tuple(shape))
    return crop(ndi.convolve(b, w, mode="constant"), axes, depth, sizes)


@functools.cache
def _fft_kwargs(fft: ModuleType) -> dict[str, int]:
    # One thread per FFT: dask already runs one task per core (scipy.fft's own default);
    # workers=-1 inside dask tasks would oversubscribe the cores. cupyx has no workers.
    return {"workers": 1} if "workers" in inspect.signature(fft.rfftn).parameters else {}


def _spectrum(taps: Taps, xp: Any, fft: ModuleType, lengths: tuple[int, ...], ndim: int, axes):
    key = ("spectrum", getattr(xp, "__name__", str(xp)), lengths, ndim, axes)
    if key not in taps.cache:
        w = _on_device(xp, taps, "weights", taps.weights)
        k = fft.rfftn(w, s=lengths, **_fft_kwargs(fft))
        shape = [1] * ndim
        for i, ax in enumerate(axes):
            shape[ax] = k.shape[i]
        taps.cache[key] = xp.reshape(k, tuple(shape))
    return taps.cache[key]


def _fft(b: Any, taps: Taps, axes, depth, sizes, xp: Any) -> Any:
    fft = fft_module(xp)
    lengths = tuple(int(fft.next_fast_len(b.shape[ax], real=True)) for ax in axes)
    kw = _fft_kwargs(fft)
    spec = fft.rfftn(b, s=lengths, axes=axes, **kw)
    spec *= _spectrum(taps, xp, fft, lengths, b.ndim, axes)
    full = fft.irfftn(spec, s=lengths, axes=axes, **kw)
    # Circular convolution: output i of the interior sits at d + i + centre.
    starts = [d + n // 2 for d, n in zip(depth, taps.shape, strict=True)]
    return crop(full, axes, starts, sizes)


def spread_nonfinite(
    out: Any, bad: Any, taps: Taps, *, axes: tuple[int, ...], depth: tuple[int, ...], method: str
) -> Any:
    """``out`` with NaN wherever the kernel's footprint covers a ``bad`` (padded) value."""
    xp = array_namespace(out)
    count = convolve_padded(
        xp.astype(bad, xp.float64), taps.footprint(), axes=axes, depth=depth, method=method
    )
    return xp.where(count > 0.5, xp.nan, out)


def convolve_block(
    b: Any, taps: Taps, *, axes: tuple[int, ...], depth: tuple[int, ...], method: str
) -> Any:
    """Like :func:`convolve_padded`, but NaN/inf spread only as far as the kernel reaches
    (its footprint of nonzero weights), whichever the method, as scipy.ndimage does."""
    xp = array_namespace(b)
    if method == "direct":
        return convolve_padded(b, taps, axes=axes, depth=depth, method=method)
    bad = ~xp.isfinite(b)
    if not bool(xp.any(bad)):
        return convolve_padded(b, taps, axes=axes, depth=depth, method=method)
    out = convolve_padded(xp.where(bad, 0.0, b), taps, axes=axes, depth=depth, method=method)
    return spread_nonfinite(out, bad, taps, axes=axes, depth=depth, method=method)
