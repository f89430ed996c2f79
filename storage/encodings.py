"""Encodings of cube variables: how signed floats are laid out in a store.

:func:`encode` is called right before :func:`~cubepipe.storage.store.write_cube`; the
dataset it returns goes through ``write_cube`` unchanged, and every reader (``open_cube``
or plain ``xarray.open_zarr``) gets floats back. The encodings (``--encoding``):

``float32`` (default, lossless)
    Values are stored exactly as they are: float32 stays float32 and float64 stays float64
    (the name is the contract's default dtype; nothing is ever narrowed). Integer data are
    also stored as they are.
``float16``
    Half precision (2 bytes). Refuses any finite ``|value| > 65504`` (float16's largest
    finite number). ``max_abs_error`` is measured: ``max |x - float64(float16(x))|`` over
    finite values, in float64, in the same pass as the range check. NaN and +-inf are
    exact. Readers get **float16** back (CF has no standard way to ask a reader to widen
    a float; ``xarray`` keeps float16) -- call ``.astype("float32")`` to compute.
``int16-quantized``
    CF ``scale_factor``/``add_offset`` integers: one float64 pass finds the finite range
    ``[lo, hi]``; ``q = rint((x - add_offset) / scale_factor)`` maps it onto
    ``[-32767, 32767]`` and NaN onto ``_FillValue = -32768`` (also the zarr array's
    ``fill_value``). +-inf are refused. Readers decode ``q * scale_factor + add_offset``
    in float64 (the attrs are JSON numbers, i.e. float64, so xarray decodes to float64)
    and mask ``_FillValue`` to NaN.

Every encoding records attrs ``cubepipe_encoding``, ``cubepipe_source_dtype`` and
``max_abs_error``: an upper bound on ``|decoded - original|`` over finite values. A
``max_abs_error`` the input already carries (e.g. floats restored from a PNG sidecar by
ingest) is added, so the bound stays relative to the source. The lossless encoding labels
the variable with its stored dtype's name, unless the input carries a label of its own
(such as ingest's ``"sidecar"``), which it keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .errors import InputError

__all__ = [
    "ENCODINGS",
    "FLOAT16_MAX",
    "INT16_FILL",
    "INT16_QMAX",
    "encode",
    "finite_range",
    "int16_parameters",
    "scan_blocks",
    "to_host",
]

#: Valid ``--encoding`` names; the first is the default.
ENCODINGS = ("float32", "float16", "int16-quantized")
#: Largest finite float16.
FLOAT16_MAX = 65504.0
#: int16-quantized: NaN code (``_FillValue`` and zarr ``fill_value``) and largest |code|.
INT16_FILL = -32768
INT16_QMAX = 32767
#: Attrs an encoding (re)writes; stale copies on the input are dropped first.
_ENCODING_ATTRS = (
    "cubepipe_encoding",
    "cubepipe_source_dtype",
    "max_abs_error",
    "scale_factor",
    "add_offset",
    "_FillValue",
    "missing_value",
)


def to_host(block: Any) -> np.ndarray:
    """A NumPy view of a chunk (device arrays expose ``.get()``; storage never imports
    CuPy)."""
    if not isinstance(block, np.ndarray) and hasattr(block, "get"):
        block = block.get()
    return np.asarray(block)


# -- one pass of per-chunk statistics ------------------------------------------------------


def _stats_block(block: Any, *, fn: Callable[[np.ndarray], Any]) -> np.ndarray:
    values = fn(to_host(block))
    return np.asarray(values, dtype=np.float64).reshape((1,) * np.ndim(block) + (-1,))


def scan_blocks(
    data: da.Array,
    fn: Callable[[np.ndarray], Any],
    *,
    k: int,
    token: str,
    reduce: str | None = None,
) -> np.ndarray:
    """Apply ``fn`` (chunk -> ``k`` floats) to every chunk of ``data`` in one pass.

    Returns ``(nchunks, k)`` float64 (tiny per-chunk results the caller combines with
    NumPy), or with ``reduce="sum"`` their ``(k,)`` sum, added by a dask tree reduction
    (for large ``k``, e.g. histograms).
    """
    if data.size == 0:
        return np.zeros(k) if reduce == "sum" else np.empty((0, k))
    stats = da.map_blocks(
        _stats_block,
        data,
        fn=fn,
        new_axis=data.ndim,
        chunks=(1,) * data.ndim + (k,),
        dtype=np.float64,
        meta=np.empty((0,) * (data.ndim + 1), dtype=np.float64),
        token=token,
    )
    if reduce == "sum":
        return np.asarray(stats.sum(axis=tuple(range(data.ndim))).compute())
    return np.asarray(stats.compute()).reshape(-1, k)


def _range_chunk(x: np.ndarray) -> list[float]:
    """``[-min, max]`` over finite values, ``[n(+inf) + n(-inf)]``, ``[n finite]``."""
    x = np.asarray(x, dtype=np.float64)
    fin = np.isfinite(x)
    n = int(fin.sum())
    if n == 0:
        lo = hi = -np.inf
    else:
        lo, hi = -float(x[fin].min()), float(x[fin].max())
    return [lo, hi, float(np.isinf(x).sum()), float(n)]


def finite_range(data: da.Array, *, token: str = "cubepipe-range") -> tuple[float, float, int, int]:
    """``(min, max, n_infinite, n_finite)`` over the finite values of ``data``, in float64,
    in one pass (NaN ignored; ``min``/``max`` are NaN when nothing is finite)."""
    s = scan_blocks(data, _range_chunk, k=4, token=token)
    n_fin = int(s[:, 3].sum()) if len(s) else 0
    if n_fin == 0:
        return np.nan, np.nan, int(s[:, 2].sum()) if len(s) else 0, 0
    return float(-s[:, 0].max()), float(s[:, 1].max()), int(s[:, 2].sum()), n_fin


def _float16_chunk(x: np.ndarray) -> list[float]:
    """``[max |finite x|, max |x - float16(x)| over finite x with |x| <= 65504]``.

    Computed in ``x``'s own float type, whole-chunk with ``where=`` masks (no float64
    copies, no fancy-indexed copies): ``x - float16(x)`` is exact there (Sterbenz: the two
    are within a factor 2 of each other, or the rounded value is 0)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        ax = np.abs(x)
        fin = np.isfinite(x)
        amax = float(np.max(ax, where=fin, initial=0.0))
        ok = np.logical_and(fin, ax <= FLOAT16_MAX, out=fin)
        del ax
        err = np.abs(x - x.astype(np.float16).astype(x.dtype))
        emax = float(np.max(err, where=ok, initial=0.0))
    return [amax, emax]


# -- the encodings -------------------------------------------------------------------------


def _lossless(var: xr.DataArray, name: str) -> xr.DataArray:
    label = var.attrs.get("cubepipe_encoding")
    if not isinstance(label, str) or label in ENCODINGS or _is_dtype_name(label):
        label = str(var.dtype)  # but keep upstream labels such as "sidecar" (ingest)
    return _with(var, var.data, _attrs(var, label, 0.0))


def _is_dtype_name(label: str) -> bool:
    try:
        return np.dtype(label).name == label
    except TypeError:
        return False


def _float16(var: xr.DataArray, name: str) -> xr.DataArray:
    s = scan_blocks(var.data, _float16_chunk, k=2, token="cubepipe-encode-float16-scan")
    amax, err = (float(v) for v in s.max(axis=0)) if len(s) else (0.0, 0.0)
    if amax > FLOAT16_MAX:
        raise InputError(
            f"variable {name!r} cannot be encoded as float16: its largest |value| is "
            f"{amax:.6g} but float16 holds at most {FLOAT16_MAX:g}; use --encoding "
            "int16-quantized (scaled integers) or float32 (lossless)"
        )
    data = var.data.astype(np.float16)
    return _with(var, data, _attrs(var, "float16", err))


def _quantize_block(block: Any, *, offset: float, scale: float) -> Any:
    t = (block.astype(np.float64) - offset) / scale
    q = np.clip(np.rint(t), -INT16_QMAX, INT16_QMAX)
    q[np.isnan(t)] = INT16_FILL
    return q.astype(np.int16)


def int16_parameters(lo: float, hi: float) -> tuple[float, float, float]:
    """``(scale_factor, add_offset, max_abs_error)`` mapping ``[lo, hi]`` onto
    ``[-32767, 32767]``.

    Notes
    -----
    ``scale = (hi - lo) / 65534`` and ``offset = lo + (hi - lo) / 2`` (computed as
    ``hi/2 - lo/2`` so that even +-1.8e308 does not overflow). The bound is
    ``scale/2 + 2**-51 * (32768 * scale + max(|lo|, |hi|)) + 1e-323``: half a step of
    rounding plus the float64 rounding (relative, and absolute for subnormal results) of
    the encode ``(x - offset) / scale`` and of the reader's decode ``q * scale + offset``.
    Constant data get ``q = 0`` everywhere and decode exactly.
    """
    if not np.isfinite(lo) or lo == hi:
        return 1.0, (0.0 if not np.isfinite(lo) else float(lo)), 0.0
    half = hi / 2 - lo / 2
    scale = half / INT16_QMAX
    if scale <= 0.0 or not np.isfinite(scale):  # range below float64's resolution
        scale = max(half, 5e-324)
    offset = lo + half
    bound = 0.5 * scale + 2.0**-51 * (32768 * scale + max(abs(lo), abs(hi))) + 1e-323
    return float(scale), float(offset), float(bound)


def _int16(var: xr.DataArray, name: str) -> xr.DataArray:
    lo, hi, n_inf, _ = finite_range(var.data, token="cubepipe-encode-int16-scan")
    if n_inf:
        raise InputError(
            f"variable {name!r} holds {n_inf} infinite value(s), which int16-quantized "
            "cannot represent; use --encoding float32 (lossless) or float16, or replace "
            "them with NaN first"
        )
    scale, offset, bound = int16_parameters(lo, hi)
    data = var.data.map_blocks(
        _quantize_block,
        offset=offset,
        scale=scale,
        dtype=np.int16,
        meta=var.data._meta.astype(np.int16),
        token="cubepipe-encode-int16",
    )
    attrs = _attrs(var, "int16-quantized", bound)
    attrs.update(scale_factor=scale, add_offset=offset, _FillValue=INT16_FILL)
    return _with(var, data, attrs)


def _attrs(var: xr.DataArray, encoding: str, error: float) -> dict[str, Any]:
    attrs = {k: v for k, v in var.attrs.items() if k not in _ENCODING_ATTRS}
    attrs.update(
        cubepipe_encoding=encoding,
        cubepipe_source_dtype=str(var.attrs.get("cubepipe_source_dtype", var.dtype)),
        max_abs_error=float(var.attrs.get("max_abs_error", 0.0)) + float(error),
    )
    return attrs


def _with(var: xr.DataArray, data: Any, attrs: dict[str, Any]) -> xr.DataArray:
    out = xr.DataArray(data, dims=var.dims, coords=var.coords, attrs=attrs, name=var.name)
    return out.drop_encoding()


_ENCODERS: dict[str, Callable[[xr.DataArray, str], xr.DataArray]] = {
    "float32": _lossless,
    "float16": _float16,
    "int16-quantized": _int16,
}


def encode(ds: xr.Dataset, encoding: str, *, variables: Iterable[str] = ("cube",)) -> xr.Dataset:
    """Encode data variables of ``ds`` for storage (see the module docstring).

    Parameters
    ----------
    ds
        Dataset whose ``variables`` are real-valued (float or integer) arrays, ideally
        dask-backed; NumPy-backed ones are wrapped as a single dask chunk.
    encoding
        One of :data:`ENCODINGS`: ``"float32"`` (lossless: float32 and float64 kept as
        they are), ``"float16"`` or ``"int16-quantized"``.
    variables
        Names of the data variables to encode; the others are returned untouched.

    Returns
    -------
    xarray.Dataset
        A shallow copy whose encoded variables are lazy dask arrays (float32/float64,
        float16 or int16) with the attrs ``cubepipe_encoding``, ``cubepipe_source_dtype``,
        ``max_abs_error`` (plus ``scale_factor``, ``add_offset``, ``_FillValue`` for
        int16-quantized). ``float16`` and ``int16-quantized`` read their input once here
        (range and error statistics, float64); writing reads it once more.

    Raises
    ------
    InputError
        Unknown encoding or variable, a non-real dtype, values float16 cannot hold,
        +-inf for int16-quantized.
    """
    if encoding not in ENCODINGS:
        raise InputError(f"unknown encoding {encoding!r}; expected one of: {', '.join(ENCODINGS)}")
    out = ds.copy(deep=False)
    for name in variables:
        if name not in ds.data_vars:
            have = ", ".join(map(str, ds.data_vars)) or "none"
            raise InputError(f"cannot encode variable {name!r}: not in the dataset (has: {have})")
        var = ds[name]
        if var.dtype.kind not in "fiu":
            raise InputError(
                f"cannot encode variable {name!r} of dtype {var.dtype} as {encoding}: "
                "only real float or integer data can be encoded"
            )
        if not isinstance(var.data, da.Array):
            var = var.chunk()
        out[name] = _ENCODERS[encoding](var, name)
    return out
