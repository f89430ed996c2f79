"""Masked (normalized) convolution of one padded block.

For weights ``w`` (1 where a value is valid, 0 where it is not, NaN zeroed first)::

    y = conv(x * w, k) / conv(w, k),    support = conv(w, k) / sum(k)

defined where ``support >= min_support``: the kernel sees at least that fraction of its
weight on valid values (else the output is invalid, NaN). Invalid inputs stay invalid
unless ``fill``. With a separable kernel both convolutions are done as 1-D passes, which
is exact. Multi-term filters (``highpass = x - lowpass(x)``, ``bandpass``) normalize each
smoothing term; a filled value's own ``x`` is its first term's estimate.

Speed: when the weights are the same in every band of a block (a store ``mask``, or NaN
in all bands alike) ``conv(w, k)`` is computed once per block, not once per band, and
when the whole padded block is valid it is the constant ``sum(k)`` and skipped.
"""

from __future__ import annotations

from typing import Any

from ..backend import array_namespace
from .convolve import convolve_padded, crop, spread_nonfinite
from .kernels import Kernel

__all__ = ["normalized_block"]


def _denominator_weights(w: Any, axes: tuple[int, ...], xp: Any) -> Any | None:
    """float64 weights for ``conv(w, k)``: reduced to one slice when they do not vary
    outside ``axes``; None when every weight is 1."""
    others = tuple(i for i in range(w.ndim) if i not in axes)
    if others:
        every = xp.all(w, axis=others, keepdims=True)
        if bool(xp.all(every == xp.any(w, axis=others, keepdims=True))):
            w = every
    if bool(xp.all(w)):
        return None
    return xp.astype(w, xp.float64)


def normalized_block(
    b: Any,
    w: Any,
    kernel: Kernel,
    *,
    axes: tuple[int, ...],
    depth: tuple[int, ...],
    method: str,
    min_support: float,
    fill: bool,
    finite: bool = False,
) -> Any:
    """Normalized convolution of the padded float64 block ``b`` (overwritten) with bool
    weights ``w`` (same shape); returns the float64 interior, NaN where invalid.

    Non-finite values where ``w`` is True spread NaN as far as the kernel reaches, as in
    plain convolution (``finite=True`` says ``w`` already excludes them).
    """
    xp = array_namespace(b)
    sizes = [b.shape[ax] - 2 * d for ax, d in zip(axes, depth, strict=True)]
    valid_in = crop(w, axes, depth, sizes)
    if not bool(xp.any(w)):
        return xp.full(valid_in.shape, xp.nan, dtype=xp.float64)
    own = crop(b, axes, depth, sizes)
    own = xp.where(valid_in, own, xp.nan) if kernel.identity else None
    b[~w] = 0.0  # b is now x * w
    bad = None
    if not finite:
        bad = ~xp.isfinite(b)
        if bool(xp.any(bad)):
            b[bad] = 0.0
        else:
            bad = None
    den_w = _denominator_weights(w, axes, xp)
    out: Any = None
    ok: Any = None
    first: Any = None
    for coef, taps in kernel.terms:
        value = convolve_padded(b, taps, axes=axes, depth=depth, method=method)
        if den_w is None:
            value *= 1.0 / taps.total
        else:
            den = convolve_padded(den_w, taps, axes=axes, depth=depth, method=method)
            # A tie with the threshold must not depend on the method's rounding.
            good = den >= min_support * taps.total - 1e-9 * taps.magnitude
            ok = good if ok is None else (ok & good)
            value /= xp.where(good, den, 1.0)
        first = value if first is None else first
        term = value if coef == 1.0 else coef * value
        out = term if out is None else out + term
    if own is not None:
        if fill:
            own = xp.where(valid_in, own, first)
        out = out + kernel.identity * own
    keep = ok if fill else (valid_in if ok is None else valid_in & ok)
    if keep is not None:
        out = xp.where(keep, out, xp.nan)
    if bad is not None:
        out = spread_nonfinite(out, bad, kernel.taps, axes=axes, depth=depth, method=method)
    return out
