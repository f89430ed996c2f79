"""Map signed floats onto the unsigned integers of an 8/16-bit image, and back.

Only the user chooses the range ``[lo, hi]`` (``--scale``):

``minmax``
    The finite minimum and maximum of the exported values (one float64 pass).
``percentile:LO,HI``
    The LO-th and HI-th percentiles (0 <= LO < HI <= 100) of the finite values. Two
    passes: the finite range, then a histogram of :data:`PERCENTILE_BINS` bins in float64
    merged over all chunks; each percentile is read off the cumulative counts with
    linear interpolation, and lies within one bin width ``(max - min) / 65536`` of
    ``numpy.percentile(..., method="linear")`` of the finite values.
``fixed:A,B``
    ``[A, B]`` as given.

Codes (:class:`Quantizer`): ``0`` marks NaN (``nan_value`` in the sidecar); finite values
map linearly onto ``1 .. 2**bits - 1``::

    q = clip(rint((x - lo) / scale) + 1, 1, qmax),  scale = (hi - lo) / (qmax - 1)
    x ~ q * scale + offset,                          offset = lo - scale

Values outside ``[lo, hi]`` (+-inf included) are clipped to the end codes, because the
user asked for that range; they are counted and their excess enters the error bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from ..encodings import finite_range, scan_blocks
from ..errors import InputError

__all__ = ["PERCENTILE_BINS", "Quantizer", "ScaleSpec", "parse_scale", "resolve_range"]

PERCENTILE_BINS = 65536
_SCALE_HELP = "expected minmax, percentile:LO,HI (e.g. percentile:1,99) or fixed:A,B"


@dataclass(frozen=True)
class ScaleSpec:
    """A parsed ``--scale`` value."""

    method: str  # "minmax" | "percentile" | "fixed"
    a: float = 0.0
    b: float = 0.0

    def __str__(self) -> str:
        return self.method if self.method == "minmax" else f"{self.method}:{self.a:g},{self.b:g}"


def parse_scale(text: str) -> ScaleSpec:
    """Parse ``minmax``, ``percentile:LO,HI`` or ``fixed:A,B``."""
    method, _, args = str(text).strip().partition(":")
    method = method.lower()
    if method == "minmax" and not args:
        return ScaleSpec("minmax")
    if method in ("percentile", "fixed"):
        try:
            a, b = (float(v) for v in args.split(","))
        except ValueError:
            raise InputError(f"bad --scale {text!r}: {_SCALE_HELP}") from None
        if not (np.isfinite(a) and np.isfinite(b) and a < b):
            raise InputError(f"bad --scale {text!r}: need finite {method} bounds with A < B")
        if method == "percentile" and not (0.0 <= a and b <= 100.0):
            raise InputError(f"bad --scale {text!r}: percentiles must lie in 0..100")
        return ScaleSpec(method, a, b)
    raise InputError(f"bad --scale {text!r}: {_SCALE_HELP}")


@dataclass(frozen=True)
class _Histogram:
    """Chunk -> ``[n(-inf), counts of PERCENTILE_BINS bins over [lo, hi], n(+inf)]``."""

    lo: float
    hi: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        counts, _ = np.histogram(x[np.isfinite(x)], bins=PERCENTILE_BINS, range=(self.lo, self.hi))
        inf = [float((x == -np.inf).sum())], [float((x == np.inf).sum())]
        return np.concatenate([inf[0], counts.astype(np.float64), inf[1]])


def _percentiles(data: da.Array, lo: float, hi: float, ps: tuple[float, float]) -> list[float]:
    counts = scan_blocks(
        data,
        _Histogram(lo, hi),
        k=PERCENTILE_BINS + 2,
        token="cubepipe-export-histogram",
        reduce="sum",
    )
    cum = np.cumsum(counts)
    n = cum[-1]
    width = (hi - lo) / PERCENTILE_BINS

    def value_at(rank: float) -> float:  # the rank-th smallest value (0-based)
        i = int(np.searchsorted(cum, rank, side="right"))
        if i == 0:
            return -np.inf
        if i == len(cum) - 1:
            return np.inf
        before = cum[i - 1]
        frac = (rank - before + 0.5) / max(counts[i], 1.0)
        return float(lo + (i - 1 + min(max(frac, 0.0), 1.0)) * width)

    out = []
    for p in ps:
        h = (n - 1) * p / 100.0
        k0, k1 = np.floor(h), np.ceil(h)
        v0, v1 = value_at(k0), value_at(k1)
        out.append(v0 if k0 == k1 or v0 == v1 else v0 + (h - k0) * (v1 - v0))
    return out


def resolve_range(data: da.Array, spec: ScaleSpec, *, what: str) -> tuple[float, float]:
    """The ``[lo, hi]`` that ``spec`` selects over ``data`` (float64); ``what`` names the
    data in errors."""
    if spec.method == "fixed":
        return spec.a, spec.b
    lo, hi, n_inf, n_fin = finite_range(data, token="cubepipe-export-range")
    if n_fin == 0:
        raise InputError(f"{what} holds no finite values, so --scale {spec} has no range")
    if spec.method == "minmax":
        return lo, hi
    if lo == hi:
        return lo, hi
    if not np.isfinite(hi - lo):
        raise InputError(f"{what} spans more than float64 can histogram; use --scale fixed:A,B")
    a, b = _percentiles(data, lo, hi, (spec.a, spec.b))
    if not (np.isfinite(a) and np.isfinite(b)):
        raise InputError(
            f"--scale {spec} falls on infinite values of {what}; narrow the percentiles "
            "or use --scale fixed:A,B"
        )
    return a, b


@dataclass(frozen=True)
class Quantizer:
    """Float -> ``bits``-bit codes (see the module docstring), picklable for dask.

    ``__call__`` returns the codes and, per ``(..., band)``, the stats
    ``[n_nan, n_below, n_above, n_infinite, max_excess]`` where ``max_excess`` is the
    largest distance of a clipped finite value from ``[lo, hi]``.
    """

    lo: float
    hi: float
    bits: int

    K = 5
    nan_value = 0

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.bits == 8 else np.uint16)

    @property
    def scale(self) -> float:
        return (self.hi - self.lo) / (self.qmax - 1) if self.hi > self.lo else 1.0

    @property
    def offset(self) -> float:
        return self.lo - self.scale

    def bound(self, max_excess: float = 0.0) -> float:
        """``max |q * scale + offset - x|`` over finite ``x``, evaluated in float64: half a
        step (zero for constant data) or the largest clipping excess, plus float64
        rounding of the encode and the decode."""
        slop = 2.0**-50 * (abs(self.lo) + abs(self.hi) + (self.qmax + 2) * self.scale) + 1e-323
        half = 0.5 * self.scale if self.hi > self.lo else 0.0
        return float(max(half, max_excess) + slop)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x64 = np.asarray(x, dtype=np.float64)
        nan = np.isnan(x64)
        with np.errstate(invalid="ignore", over="ignore"):
            top = self.qmax if self.hi > self.lo else 1  # a one-value range has one code
            q = np.clip(np.rint((x64 - self.lo) / self.scale) + 1, 1, top)
        q[nan] = self.nan_value
        fin = np.isfinite(x64)
        below, above = x64 < self.lo, x64 > self.hi
        excess = np.where(fin & below, self.lo - x64, 0.0)
        excess = np.maximum(excess, np.where(fin & above, x64 - self.hi, 0.0))
        ax = (-2, -1)
        stats = np.stack(
            [
                nan.sum(axis=ax),
                below.sum(axis=ax),
                above.sum(axis=ax),
                np.isinf(x64).sum(axis=ax),
                excess.max(axis=ax, initial=0.0),
            ],
            axis=-1,
        ).astype(np.float64)
        return q.astype(self.dtype), stats
