"""Kernel specifications (``gaussian:SIGMA``, ``box:N``, ``file:K.npy``, ``lowpass:F``,
``highpass:F``, ``bandpass:F1,F2``) and the kernels built from them, once per call.

A :class:`Kernel` is a linear filter ``out = identity * x + sum_i coef_i * (k_i * x)``
over one or two axes. Unmasked filtering applies it as the single kernel
:attr:`Kernel.taps`; masked (normalized) convolution normalizes each smoothing term
``k_i`` separately, which is what makes ``highpass`` (``x - lowpass(x)``) and
``bandpass`` (``lowpass(F2) - lowpass(F1)``) meaningful on masked data.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cubepipe.storage.errors import FormatError, InputError
from cubepipe.storage.readers.npy import read_header

from .frequency import MIN_CUTOFF, butterworth_lowpass

__all__ = ["FORMS", "Kernel", "KernelSpec", "Taps", "make_kernel", "parse_kernel"]

#: The accepted spellings, quoted in every error about a kernel spec.
FORMS = "gaussian:SIGMA, box:N, file:K.npy, lowpass:F, highpass:F, bandpass:F1,F2"
#: Largest kernel radius accepted (pixels or bands), for every kind.
MAX_RADIUS = 1100
#: Most weights a ``file:K.npy`` kernel may hold (32 MiB of float64).
MAX_KERNEL_TAPS = 2**22
#: Weights of smaller magnitude do not count as taps (scipy.ndimage's rule).
TINY = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class KernelSpec:
    """A parsed ``--kernel`` value: ``kind`` with numeric ``params`` (or a loaded file)."""

    spec: str
    kind: str
    params: tuple[float, ...] = ()
    array: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def is_frequency(self) -> bool:
        return self.kind in ("lowpass", "highpass", "bandpass")


def _bad(spec: str, why: str) -> InputError:
    return InputError(
        f"bad kernel {spec!r}: {why}; valid forms: {FORMS} "
        f"(F in cycles/pixel, {MIN_CUTOFF:g} <= F < 0.5)"
    )


def _numbers(spec: str, text: str, count: int) -> tuple[float, ...]:
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise _bad(spec, f"expected {count} number(s) after ':', got {text!r}")
    return values


def parse_kernel(spec: str) -> KernelSpec:
    """Parse a kernel spec; raises :class:`InputError` naming it and the valid forms.

    ``file:K.npy`` is loaded here (``allow_pickle=False``) and must hold a finite 1-D or
    2-D real array with a nonzero weight.
    """
    kind, sep, rest = str(spec).strip().partition(":")
    kind = kind.lower()
    if not sep or not rest:
        raise _bad(spec, "expected KIND:VALUE")
    if kind == "file":
        return KernelSpec(str(spec), kind, (), _load(spec, Path(rest)))
    if kind == "gaussian":
        (sigma,) = _numbers(spec, rest, 1)
        if not 0 < sigma <= MAX_RADIUS / 4:
            raise _bad(spec, f"SIGMA must be in (0, {MAX_RADIUS / 4:g}]")
        return KernelSpec(str(spec), kind, (sigma,))
    if kind == "box":
        (n,) = _numbers(spec, rest, 1)
        if n != int(n) or not 1 <= n <= 2 * MAX_RADIUS + 1:
            raise _bad(spec, f"N must be a whole number from 1 to {2 * MAX_RADIUS + 1}")
        return KernelSpec(str(spec), kind, (float(n),))
    if kind in ("lowpass", "highpass", "bandpass"):
        freqs = _numbers(spec, rest, 2 if kind == "bandpass" else 1)
        if not all(MIN_CUTOFF <= f < 0.5 for f in freqs):
            raise _bad(spec, "cutoff out of range")
        if kind == "bandpass" and not freqs[0] < freqs[1]:
            raise _bad(spec, "bandpass needs F1 < F2")
        return KernelSpec(str(spec), kind, freqs)
    raise _bad(spec, f"unknown kind {kind!r}")


def _header(spec: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the ``.npy`` header alone, checked against the limits and the
    file's size before anything is allocated (a 100-byte file may claim 100000 x 100000)."""
    if not path.exists():
        raise _bad(spec, f"kernel file {path} not found")
    if not path.is_file():  # a FIFO would block, /dev/zero never end
        raise _bad(spec, f"{path} is not a regular file; save the kernel with numpy.save")
    try:
        shape, dtype, offset = read_header(path)
    except FormatError as exc:
        raise _bad(spec, str(exc)) from None
    if dtype.hasobject:
        raise _bad(
            spec,
            f"{path} is not a readable numeric array: it holds Python objects (a pickle), and "
            "cubepipe never unpickles files since that can run arbitrary code; save a "
            "numeric array",
        )
    if dtype.kind not in "biuf" or dtype.names is not None or len(shape) not in (1, 2):
        raise _bad(spec, f"{path} must hold a 1-D or 2-D real array, got {dtype}{tuple(shape)}")
    side = 2 * MAX_RADIUS + 1
    if max(shape) > side or math.prod(shape) > MAX_KERNEL_TAPS:
        raise _bad(
            spec,
            f"{path} declares shape {tuple(shape)}; a kernel may have at most {side} taps per "
            f"axis and {MAX_KERNEL_TAPS} in all",
        )
    need = offset + math.prod(shape) * dtype.itemsize
    if path.stat().st_size < need:
        raise _bad(
            spec,
            f"{path} is truncated or its header is damaged: {dtype}{tuple(shape)} needs "
            f"{need} bytes, the file has {path.stat().st_size}",
        )
    return tuple(shape), dtype


def _load(spec: str, path: Path) -> np.ndarray:
    _header(spec, path)
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise _bad(spec, f"{path} is not a readable .npy array ({exc})") from exc
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0 or not np.isfinite(a).all() or not np.abs(a).max() > 0:
        raise _bad(spec, f"{path} must be non-empty, finite and not all zero")
    if max(a.shape) > 2 * MAX_RADIUS + 1:
        raise _bad(spec, f"{path} has shape {a.shape}; at most {2 * MAX_RADIUS + 1} per axis")
    return a


@dataclass(frozen=True, eq=False)
class Taps:
    """One convolution kernel: ``weights`` (float64, 1-D or 2-D), and its 1-D ``factors``
    when separable (``weights`` is their outer product). Centre index ``n // 2`` per
    axis, as :func:`scipy.ndimage.convolve`."""

    weights: np.ndarray
    factors: tuple[np.ndarray, ...] | None = None
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weights.shape)

    @property
    def total(self) -> float:
        return float(self.weights.sum())

    @property
    def magnitude(self) -> float:
        """``sum(|weights|)``: the scale of rounding errors in a convolution."""
        return float(np.abs(self.weights).sum())

    @property
    def cost(self) -> int:
        """Multiply-adds per output value of direct convolution."""
        if self.factors is not None:
            return sum(len(f) for f in self.factors)
        return int(np.count_nonzero(np.abs(self.weights) > TINY))

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.weights.tobytes() + str(self.shape).encode()).hexdigest()

    def footprint(self) -> Taps:
        """Kernel of ones where a weight counts (where non-finite input spreads to)."""
        if "footprint" not in self.cache:
            w = (np.abs(self.weights) > TINY).astype(np.float64)
            f = None if self.factors is None else tuple(np.ones_like(v) for v in self.factors)
            self.cache["footprint"] = Taps(w, f)
        return self.cache["footprint"]


def _separable(factors: tuple[np.ndarray, ...]) -> Taps:
    w = factors[0]
    for f in factors[1:]:
        w = np.multiply.outer(w, f)
    return Taps(np.ascontiguousarray(w), factors)


def _single(w: np.ndarray) -> Taps:
    return Taps(w, (w,) if w.ndim == 1 else None)


@dataclass(frozen=True, eq=False)
class Kernel:
    """A built filter: ``taps`` for plain convolution, ``terms`` and ``identity`` for the
    normalized form (see the module docstring)."""

    spec: KernelSpec
    taps: Taps
    terms: tuple[tuple[float, Taps], ...]
    identity: float = 0.0

    @property
    def depth(self) -> tuple[int, ...]:
        """Halo per axis: how far any output looks from its own position."""
        all_taps = [self.taps] + [t for _, t in self.terms]
        return tuple(max(t.shape[i] // 2 for t in all_taps) for i in range(self.taps.weights.ndim))

    @property
    def digest(self) -> str:
        parts = [self.spec.spec, str(self.identity), self.taps.digest]
        parts += [f"{c}:{t.digest}" for c, t in self.terms]
        return hashlib.sha1("|".join(parts).encode()).hexdigest()


def _gaussian1d(sigma: float) -> np.ndarray:
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage.gaussian_filter's truncate=4.0
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _centred_pad(w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    pads = [((s - n) // 2, s - n - (s - n) // 2) for s, n in zip(shape, w.shape, strict=True)]
    return np.pad(w, pads)


def make_kernel(spec: KernelSpec | str, ndim: int) -> Kernel:
    """Build the kernel of ``spec`` over ``ndim`` axes (2: ``(y, x)``, 1: ``band``).

    Gaussian and box kernels are separable (two 1-D passes on planes); a 1-D file kernel
    on planes is applied along ``y`` and then ``x``; a 2-D file kernel is used as is.
    """
    spec = parse_kernel(spec) if isinstance(spec, str) else spec
    if spec.kind == "gaussian":
        taps = _separable((_gaussian1d(spec.params[0]),) * ndim)
    elif spec.kind == "box":
        n = int(spec.params[0])
        taps = _separable((np.full(n, 1.0 / n),) * ndim)
    elif spec.kind == "file":
        a = spec.array
        assert a is not None
        if a.ndim > ndim:
            raise InputError(
                f"kernel {spec.spec!r} is {a.ndim}-D but filtering along one axis "
                "(--axis spectral) needs a 1-D kernel"
            )
        taps = _separable((a,) * ndim) if a.ndim == 1 else _single(a)
    else:
        return _frequency_kernel(spec, ndim)
    return Kernel(spec, taps, ((1.0, taps),))


def _frequency_kernel(spec: KernelSpec, ndim: int) -> Kernel:
    smooth = [butterworth_lowpass(f, ndim) for f in spec.params]
    if spec.kind == "lowpass":
        t = _single(smooth[0])
        return Kernel(spec, t, ((1.0, t),))
    if spec.kind == "highpass":
        delta = np.zeros_like(smooth[0])
        delta[tuple(n // 2 for n in delta.shape)] = 1.0
        low = _single(smooth[0])
        return Kernel(spec, _single(delta - smooth[0]), ((-1.0, low),), identity=1.0)
    low1, low2 = smooth  # F1 < F2: the lower cutoff has the wider kernel
    band = _centred_pad(low2, low1.shape) - low1
    return Kernel(spec, _single(band), ((1.0, _single(low2)), (-1.0, _single(low1))))
