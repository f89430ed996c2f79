"""How far NaN spread in a filter run without ``mask_nan``: the counts its warning gives.

Without ``mask_nan`` a NaN (or inf) the mask does not exclude spreads, as in
:func:`scipy.ndimage.convolve`, to every output whose kernel covers it. The counts are
lazy, meant to be computed in the same pass as the write (``write_cube(results=...)``),
sharing the input and output chunks with it.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from cubepipe.pipeline.cube import cube_and_valid

from ..backend import array_namespace

__all__ = ["nan_spread", "nan_spread_summary"]


def _counts_block(x: Any, out: Any, valid: Any = None, *, band: int) -> np.ndarray:
    """``[non-finite valid inputs, pixels gone NaN]`` of one block, shape ``(1,) * ndim + (2,)``."""
    xp = array_namespace(out)
    x = xp.asarray(x)
    ok = xp.isfinite(x)
    bad = ~ok
    if valid is not None:
        valid = xp.asarray(valid)
        ok &= valid
        bad &= valid
    gone = xp.any(ok & ~xp.isfinite(out), axis=band)
    counts = [int(xp.count_nonzero(bad)), int(xp.count_nonzero(gone))]
    return np.asarray(counts, dtype=np.int64).reshape((1,) * x.ndim + (2,))


def nan_spread(ds: xr.Dataset, filtered: xr.Dataset, *, variable: str = "cube") -> da.Array:
    """Lazy int64 ``[nonfinite, affected]`` for a filter of ``ds`` into ``filtered``.

    ``nonfinite``: input values that are NaN/inf where the ``mask`` (if any) says valid;
    ``affected``: output pixels (every band at one position) where some band is NaN/inf
    although its input value was finite and valid -- the NaN spread into them (with a
    store mask, also pixels whose kernel saw too little valid weight).
    """
    cube, valid = cube_and_valid(ds, variable)
    out = filtered[variable].data
    x = cube.data.rechunk(out.chunks)
    args = [x, out] if valid is None else [x, out, valid.rechunk(out.chunks)]
    per_block = da.map_blocks(
        _counts_block,
        *args,
        band=cube.get_axis_num("band"),
        new_axis=x.ndim,
        chunks=tuple((1,) * len(c) for c in x.chunks) + ((2,),),
        dtype=np.int64,
        meta=np.empty((0,) * (x.ndim + 1), dtype=np.int64),
        token="cubepipe-filter-nanspread",
    )
    return per_block.sum(axis=tuple(range(x.ndim)), dtype=np.int64)


def nan_spread_summary(values: dict[str, Any]) -> dict[str, int]:
    """The computed ``{"nan_spread": [nonfinite, affected]}`` as a history ``results``."""
    nonfinite, affected = (int(v) for v in np.asarray(values["nan_spread"]).ravel())
    return {"nonfinite_inputs": nonfinite, "nan_spread_pixels": affected}
