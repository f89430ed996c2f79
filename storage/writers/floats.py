"""Exact float exports: ``.tif`` (one page per band) and ``.npy``, streamed in one pass.

The float dtype written is ``bits`` (32 or 64) if given, else the float dtype the values
had before any lossy encoding (attr ``cubepipe_source_dtype``), else the dtype the store
decodes to; float16 widens to float32 (which TIFF readers support). Integer stores keep
their integer dtype unless ``bits`` is given. A narrowing conversion (e.g. an int16-quantized store decodes to
float64 and is exported as its float32 source dtype) is measured while writing: the
largest ``|written - store value|`` is returned, and values that would overflow are
refused (the temporary file is removed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ..geo import GeoRef, write_georef
from ._staging import staging
from ._stream import FloatCast
from .npy import write_npy
from .tiff import write_tiff

__all__ = ["export_floats", "float_dtype"]


def float_dtype(var: xr.DataArray, bits: int | None) -> np.dtype:
    """The dtype a ``.tif``/``.npy`` export of ``var`` writes (module docstring)."""
    if bits is not None:
        return np.dtype(f"float{bits}")
    src = var.attrs.get("cubepipe_source_dtype")
    dtype = var.dtype
    if var.attrs.get("cubepipe_encoding") in ("float16", "int16-quantized") and src:
        if np.dtype(src).kind == "f":  # integer sources keep the decoded floats
            dtype = np.dtype(src)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def export_floats(
    var: xr.DataArray,
    out: Path,
    *,
    fmt: str,
    bits: int | None,
    bands: list[int],
    source: str,
    georef: GeoRef | None = None,
) -> dict[str, Any]:
    """Write ``var`` (``(..., band, y, x)``, bands selected) to ``out`` as ``fmt``
    (``"tiff"`` or ``"npy"``); a TIFF with ``georef`` is a GeoTIFF (bands as samples,
    CRS and transform written by GDAL). Returns ``dtype``, ``max_abs_error``, ``exact``."""
    dtype = float_dtype(var, bits)
    exact = bool(np.can_cast(var.dtype, dtype, casting="safe"))
    convert = FloatCast(dtype.str, measure=not exact)
    with staging() as st:
        tmp = st.temp(out)
        if fmt == "tiff":
            meta = {"source": source, "variable": str(var.name), "bands": bands}
            stats = write_tiff(
                var.data,
                tmp,
                dtype=dtype,
                convert=convert,
                k=2,
                metadata=meta,
                separate=georef is not None,
            )
        else:
            stats = write_npy(var.data, tmp, dtype=dtype, convert=convert, k=2)
        overflow = int(stats[..., 0].sum())
        if overflow:
            raise InputError(
                f"exporting {source}:{var.name} as {dtype} would overflow {overflow} value(s) "
                "beyond its range; export with --bits 64"
            )
        if fmt == "tiff" and georef is not None:
            write_georef(tmp, georef)
    error = float(stats[..., 1].max(initial=0.0))
    return {"dtype": dtype, "max_abs_error": error, "exact": exact}
