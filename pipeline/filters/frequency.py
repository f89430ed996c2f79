"""Smooth frequency filters (Butterworth) as finite spatial kernels.

A frequency filter is turned into its impulse response, truncated where it has decayed
below :data:`TRUNCATE` of its peak. The truncated kernel is then applied like any other
(direct or by ``rfft``, chunked with halos), so a chunked result equals the whole-plane
result exactly and planes larger than memory still stream.

The transfer function is a periodic ("discrete") Butterworth of order :data:`ORDER`::

    H(f) = 1 / (1 + (rho(f) / rho_c) ** (2 * ORDER)),
    rho(f) ** 2 = sum_i sin(pi * f_i) ** 2,    rho_c = sin(pi * F),

with ``f_i`` in cycles/pixel along each filtered axis. On the axes ``H`` is 1/2 exactly at
the cutoff ``F``; at low frequencies ``rho ~ pi |f|``, the classic radially symmetric
Butterworth. Because ``H`` is smooth and periodic, its impulse response decays
exponentially (about ``exp(-4.4 F r)``), so the truncated kernel has a radius of about
``5.3 / F`` pixels and reproduces ``H`` to better than 1e-9.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..backend import fft_module

__all__ = ["MIN_CUTOFF", "ORDER", "TRUNCATE", "butterworth_lowpass", "transfer_function"]

#: Butterworth order (the response falls as ``f ** -(2 * ORDER)`` past the cutoff).
ORDER = 2
#: Kernel taps smaller than this fraction of the peak are cut off.
TRUNCATE = 1e-10
#: Smallest cutoff (cycles/pixel); lower ones need kernels over ~1000 px in radius.
MIN_CUTOFF = 0.005


def transfer_function(freqs: Sequence[np.ndarray], cutoff: float) -> np.ndarray:
    """``H`` of the Butterworth lowpass at the (broadcastable) frequency grids ``freqs``."""
    rho2 = sum((np.sin(np.pi * f) ** 2 for f in freqs), np.zeros(()))
    return np.asarray(1.0 / (1.0 + (rho2 / math.sin(math.pi * cutoff) ** 2) ** ORDER))


def butterworth_lowpass(cutoff: float, ndim: int) -> np.ndarray:
    """The truncated impulse response of the Butterworth lowpass, float64.

    Parameters
    ----------
    cutoff
        Half-power frequency ``F`` in cycles/pixel, ``MIN_CUTOFF <= F < 0.5``.
    ndim
        1 (one axis, e.g. along ``band``) or 2 (``(y, x)`` planes).

    Returns
    -------
    numpy.ndarray
        Odd-sized, centred kernel of shape ``(2 r + 1,) * ndim`` summing to 1.
    """
    fft = fft_module(np)
    # Grid wide enough that the periodic images of the response overlap by < 1e-12.
    grid = fft.next_fast_len(2 * (math.ceil(6.5 / cutoff) + 16) + 1, real=True)
    freqs = [fft.fftfreq(grid)] * (ndim - 1) + [fft.rfftfreq(grid)]
    grids = np.meshgrid(*freqs, indexing="ij", sparse=True)
    h = fft.fftshift(fft.irfftn(transfer_function(grids, cutoff), s=(grid,) * ndim))
    radius = _support_radius(np.abs(h), TRUNCATE)
    c = grid // 2
    h = h[(slice(c - radius, c + radius + 1),) * ndim]
    return np.ascontiguousarray(h / h.sum())


def _support_radius(a: np.ndarray, tol: float) -> int:
    """Smallest ``r`` such that every value of ``a`` farther than ``r`` from the centre
    (Chebyshev distance) is at most ``tol * a.max()``."""
    c = a.shape[0] // 2
    far = np.zeros(c + 1)
    dist = np.abs(np.arange(a.shape[0]) - c)
    for ax in range(a.ndim):
        others = tuple(i for i in range(a.ndim) if i != ax)
        profile = a.max(axis=others) if others else a
        np.maximum.at(far, dist, profile)
    beyond = np.maximum.accumulate(far[::-1])[::-1]  # beyond[r]: max at distance >= r
    small = np.flatnonzero(beyond <= tol * a.max())
    return max(int(small[0]) - 1, 0) if small.size else c
