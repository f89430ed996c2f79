"""Access to the cube variable of a Dataset: the data and which of its values are valid.

One home for what every operation (statistics, PCA, autoencoders, filters) needs first.
"""

from __future__ import annotations

import dask.array as da
import xarray as xr

from cubepipe.storage.errors import InputError

__all__ = ["cube_and_valid"]


def cube_and_valid(ds: xr.Dataset, variable: str = "cube") -> tuple[xr.DataArray, da.Array | None]:
    """The cube variable and, if the dataset has a ``mask``, a bool dask array of the
    same shape and chunks saying which values are valid."""
    if variable not in ds:
        raise InputError(
            f"no variable {variable!r} in the input (it has {', '.join(map(str, ds.data_vars))})"
        )
    cube = ds[variable]
    if "band" not in cube.dims:
        raise InputError(f"variable {variable!r} has dims {cube.dims}; expected a 'band' dim")
    if not isinstance(cube.data, da.Array):
        cube = cube.chunk()
    if "mask" not in ds or variable == "mask":
        return cube, None
    mask = ds["mask"]
    if not set(mask.dims) <= set(cube.dims):
        raise InputError(f"mask dims {mask.dims} are not a subset of {variable} dims {cube.dims}")
    valid = mask.astype(bool).broadcast_like(cube).transpose(*cube.dims).data
    if not isinstance(valid, da.Array):
        valid = da.from_array(valid)
    return cube, valid.rechunk(cube.data.chunks)
