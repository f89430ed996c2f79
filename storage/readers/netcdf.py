"""NetCDF4/HDF5 reader (xarray's ``h5netcdf`` engine, the ``netcdf`` extra).

The formats EMIT, PRISMA, EnMAP and many lab instruments ship. One variable of the file
is the cube: ``variable`` names it (``group/name`` inside HDF5 groups), else the only
3-D numeric data variable is taken. Its three dims map onto ``(band, y, x)`` by
``dims`` (the file's dim names in that order, e.g. ``"wavelength,y,x"``), else by their
names (``wavelength``/``band``/``channel``..., ``y``/``lat``/``row``/``line``...,
``x``/``lon``/``col``/``sample``...). Plain HDF5 datasets without dimension scales get
dims ``phony_dim_N`` (name them with ``dims``).

Kept: a ``wavelength`` and a ``fwhm`` coordinate (or variable) along the band dim, in
nm (micrometres converted); 1-D ``y``/``x`` coordinates; the CF grid mapping (``crs_wkt``
/ ``spatial_ref`` as GDAL and rioxarray write it, or CF projection parameters read by
GDAL's netCDF driver) or 1-D latitude/longitude coordinates (WGS 84), as the store's
georeferencing (:mod:`~cubepipe.storage.geo`). Values are decoded as xarray decodes them
(``scale_factor``/``add_offset``, ``_FillValue`` -> NaN).

Lazy: the file is opened once for its metadata; each dask block reads its own
hyperslab (blocks hold whole HDF5 chunks where the file is chunked), and a block that
cannot be read is a :class:`~cubepipe.storage.errors.FormatError` naming the file.
Classic NetCDF 3 files (``CDF\\x01``...) are read with xarray's ``scipy`` engine.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from dask.array.core import getter

from ..errors import FormatError, InputError, MissingDependencyError
from ..geo import GRID_MAPPING, crs_from_wkt, georef_of, read_georef
from ..layout import default_chunks
from .base import ReaderSpec, register
from .envi import nm_factor

__all__ = ["open_netcdf"]

_HDF5 = b"\x89HDF\r\n\x1a\n"
_CDF = (b"CDF\x01", b"CDF\x02", b"CDF\x05")
#: Lower-case dim names that say which of (band, y, x) a dim is.
_ROLES = {
    "band": {"band", "bands", "wavelength", "wavelengths", "wl", "lambda", "spectral"}
    | {"channel", "channels", "spectrum", "bands_dim"},
    "y": {"y", "lat", "latitude", "row", "rows", "line", "lines", "northing", "downtrack"}
    | {"along_track", "ydim", "nrows", "height"},
    "x": {"x", "lon", "longitude", "col", "cols", "column", "columns", "sample", "samples"}
    | {"easting", "crosstrack", "across_track", "xdim", "ncols", "width"},
}
_WAVELENGTH = ("wavelength", "wavelengths", "wl", "lambda", "center_wavelength", "band_center")
_FWHM = ("fwhm", "bandwidth", "band_width", "fwhm_nm")


def _sniff(head: bytes, path: Path) -> bool:
    return head.startswith(_HDF5) or head[:4] in _CDF


def _engine(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(8)
    if head[:4] in _CDF:
        return "scipy"
    if importlib.util.find_spec("h5netcdf") is None:
        raise MissingDependencyError(f"{path}: reading NetCDF4/HDF5", "h5netcdf", "netcdf")
    return "h5netcdf"


def _open_file(path: Path, group: str | None) -> xr.Dataset:
    engine = _engine(path)
    kwargs: dict[str, Any] = {"phony_dims": "sort"} if engine == "h5netcdf" else {}
    try:
        return xr.open_dataset(
            path,
            engine=engine,
            group=group,
            chunks=None,
            decode_times=False,
            decode_timedelta=False,
            **kwargs,
        )
    except Exception as exc:
        where = f" (group {group!r})" if group else ""
        raise FormatError(
            f"{path}{where}: not a readable NetCDF/HDF5 file ({type(exc).__name__}: {exc}); "
            "the file is damaged or not NetCDF/HDF5 (pass --format to choose a reader)"
        ) from exc


def _describe(ds: xr.Dataset, names: Sequence[Any]) -> str:
    return ", ".join(f"{n} {tuple(map(str, ds[n].dims))}" for n in names) or "none"


def _choose(ds: xr.Dataset, path: Path, variable: str | None) -> str:
    numeric = [n for n, v in ds.data_vars.items() if v.dtype.kind in "fiub"]
    cubes = [n for n in numeric if ds[n].ndim == 3]
    if variable is not None:
        if variable not in ds.variables:
            raise InputError(
                f"{path}: has no variable {variable!r}; its 3-D numeric variables: "
                f"{_describe(ds, cubes)} (all: {', '.join(map(str, ds.variables))})"
            )
        if ds[variable].ndim != 3 or ds[variable].dtype.kind not in "fiub":
            raise InputError(
                f"{path}: variable {variable!r} is {ds[variable].dtype} with dims "
                f"{tuple(map(str, ds[variable].dims))}; a cube is a 3-D numeric variable: "
                f"{_describe(ds, cubes)}"
            )
        return variable
    if len(cubes) == 1:
        return str(cubes[0])
    if not cubes:
        raise FormatError(
            f"{path}: holds no 3-D numeric variable to read as a (band, y, x) cube "
            f"(variables: {_describe(ds, numeric)}); variables in HDF5 groups are read "
            "with --variable GROUP/NAME"
        )
    raise InputError(
        f"{path}: holds several 3-D variables: {_describe(ds, cubes)}; choose one with "
        "--variable NAME"
    )


def _parse_dims(dims: str | Sequence[str]) -> list[str]:
    names = dims.split(",") if isinstance(dims, str) else list(dims)
    return [str(n).strip() for n in names]


def _roles(var: xr.DataArray, path: Path, dims: str | Sequence[str] | None) -> list[str]:
    """The variable's dims in the order (band, y, x)."""
    have = [str(d) for d in var.dims]
    hint = f"pass --dims BAND,Y,X with its dim names (e.g. --dims {','.join(have)})"
    if dims is not None:
        names = _parse_dims(dims)
        if len(names) != 3 or sorted(names) != sorted(have):
            raise InputError(
                f"{path}: --dims {','.join(names)} must name the three dims of "
                f"{var.name!r}, {tuple(have)}, once each, in the order band,y,x"
            )
        return names
    found = {role: [d for d in have if d.lower() in words] for role, words in _ROLES.items()}
    if all(len(v) == 1 for v in found.values()) and len({v[0] for v in found.values()}) == 3:
        return [found[r][0] for r in ("band", "y", "x")]
    raise InputError(
        f"{path}: cannot tell which dims of {var.name!r} {tuple(have)} are band, y and x; " + hint
    )


def _along(ds: xr.Dataset, dim: str, names: Sequence[str]) -> xr.DataArray | None:
    """A 1-D numeric coordinate or variable along ``dim`` with one of ``names``."""
    for name in ds.variables:
        var = ds[name]
        if str(name).lower() in names and var.dims == (dim,) and var.dtype.kind in "fiu":
            return var
    return None


def _spectral(ds: xr.Dataset, dim: str, path: Path) -> dict[str, Any]:
    coords: dict[str, Any] = {}
    for key, names in (("wavelength", _WAVELENGTH), ("fwhm", _FWHM)):
        var = _along(ds, dim, names)
        if var is None:
            continue
        unit = str(var.attrs.get("units", "")).strip()
        factor = nm_factor(unit) if unit else None
        attrs = {"units": "nm"} if factor is not None else ({"units": unit} if unit else {})
        if factor not in (None, 1.0):
            attrs["converted_from"] = unit
        values = np.asarray(var.values, dtype=np.float64) * (factor or 1.0)
        coords[key] = ("band", values, attrs)
    return coords


def _grid_mapping(ds: xr.Dataset, var: xr.DataArray, path: Path) -> str | None:
    """The CRS (WKT) of ``var``'s CF grid mapping, or WGS 84 for 1-D lat/lon; None."""
    ref = str(var.attrs.get("grid_mapping", "")).split(":")[0].split()
    name = ref[0] if ref else None
    if name is not None:
        if name not in ds.variables:
            raise FormatError(
                f"{path}: {var.name!r} names grid mapping {name!r}, which is not in the file; "
                "fix the attribute, or ingest without georeferencing (--no-georef)"
            )
        attrs = ds.variables[name].attrs
        what = f"grid mapping {name!r}"
        text = attrs.get("crs_wkt") or attrs.get("spatial_ref")
        if text:
            return crs_from_wkt(str(text), source=path, what=what)
        where = f'NETCDF:"{path}":{var.name}'  # the transform comes from x/y, not GDAL
        return read_georef(where, what=what, source=path, placed=False).crs_wkt
    lat = [c for c in var.coords.values() if c.attrs.get("units") == "degrees_north"]
    lon = [c for c in var.coords.values() if c.attrs.get("units") == "degrees_east"]
    if len(lat) == 1 and len(lon) == 1 and lat[0].ndim == 1 and lon[0].ndim == 1:
        return crs_from_wkt("EPSG:4326", source=path, what="latitude/longitude coordinates")
    return None


def _file_chunks(var: xr.DataArray, order: list[str], want: Mapping[str, int]) -> dict[str, int]:
    """Block sizes per file dim: the store chunks, rounded to whole HDF5 chunks."""
    stored = var.encoding.get("preferred_chunks") or {}
    out = {}
    for role, dim in zip(("band", "y", "x"), order, strict=True):
        n, size, step = var.sizes[dim], want[role], int(stored.get(dim, 1) or 1)
        out[dim] = min(n, max(step, round(size / step) * step))
    return out


def _checked_getter(path: str, a: Any, b: Any, asarray: bool = True, lock: Any = None) -> Any:
    try:
        return getter(a, b, asarray=asarray, lock=lock)
    except Exception as exc:
        raise FormatError(f"{path}: reading a block of the file failed ({exc})") from exc


def open_netcdf(
    path: str | Path,
    *,
    chunks: Mapping[str, int] | None = None,
    variable: str | None = None,
    dims: str | Sequence[str] | None = None,
    georef: bool = True,
) -> xr.Dataset:
    """Open one variable of a NetCDF/HDF5 file lazily as a cube Dataset.

    Parameters
    ----------
    path
        A NetCDF4 or HDF5 file (h5netcdf, the ``netcdf`` extra), or classic NetCDF 3.
    chunks
        ``{dim: size}`` chunk sizes by cube dim (``band``, ``y``, ``x``).
    variable
        The variable (``group/name`` in a group); default: the only 3-D numeric one.
    dims
        The variable's dims that become ``band``, ``y``, ``x``, in that order
        (``"wavelength,lat,lon"`` or a sequence); default: recognised by name.
    georef
        Keep the grid mapping as georeferencing (needs rasterio, the ``geo`` extra).

    Returns
    -------
    xarray.Dataset
        ``cube`` ``(band, y, x)`` in the decoded dtype, dask-backed; coordinates
        ``wavelength``/``fwhm`` (nm), ``y``/``x`` and the georeferencing when the file
        has them; the variable's attrs; attr ``source_variable``.

    Raises
    ------
    FormatError
        Not readable, no 3-D variable, a grid mapping that is missing or unknown.
    InputError
        Several 3-D variables and no ``variable``; dims that cannot be told apart.
    MissingDependencyError
        h5netcdf (``netcdf`` extra) or, for a grid mapping, rasterio (``geo``) missing.
    """
    p = Path(path)
    group, _, name = (variable or "").rpartition("/")
    ds = _open_file(p, group or None)
    name = _choose(ds, p, name or None)
    var = ds[name]
    order = _roles(var, p, dims)
    sizes = {r: var.sizes[d] for r, d in zip(("band", "y", "x"), order, strict=True)}
    want = default_chunks(sizes, max(var.dtype.itemsize, 4), overrides=dict(chunks or {}))
    lazy = ds[[name]].chunk(
        _file_chunks(var, order, want),
        name_prefix="cubepipe-ingest-read-netcdf-",
        from_array_kwargs={"getitem": functools.partial(_checked_getter, str(p))},
    )
    data = lazy[name].transpose(*order).data
    band, ydim, xdim = order
    attrs = {k: v for k, v in var.attrs.items() if k not in ("grid_mapping", "coordinates")}
    coords: dict[str, Any] = _spectral(ds, band, p)
    for role, dim in (("y", ydim), ("x", xdim)):
        c = var.coords[dim] if dim in var.coords else None  # not xarray's virtual range
        if c is not None and c.ndim == 1 and c.dtype.kind in "fiu":
            coords[role] = (role, np.asarray(c.values), dict(c.attrs))
    out = xr.Dataset(
        {"cube": (("band", "y", "x"), data, attrs)},
        coords=coords,
        attrs={"source": str(p), "format": "netcdf", "source_variable": str(variable or name)},
    )
    wkt = _grid_mapping(ds, var, p) if georef else None
    if wkt is not None:
        ref = {"crs_wkt": wkt, "spatial_ref": wkt}
        gm = ds.variables.get(str(var.attrs.get("grid_mapping", "")).split(":")[0].strip())
        if gm is not None and "GeoTransform" in gm.attrs:
            ref["GeoTransform"] = str(gm.attrs["GeoTransform"])
        out = out.assign_coords({GRID_MAPPING: xr.Variable((), np.int64(0), ref)})
        found = georef_of(out)
        if found is not None:
            out[GRID_MAPPING].attrs["GeoTransform"] = found.gdal()
        out["cube"].attrs["grid_mapping"] = GRID_MAPPING
    return out


register(
    ReaderSpec(
        name="netcdf",
        suffixes=(".nc", ".nc4", ".cdf", ".netcdf", ".h5", ".hdf5", ".he5"),
        sniff=_sniff,
        open=open_netcdf,
        aliases=("nc", "hdf5", "h5"),
        options=("variable", "dims", "georef"),
    )
)
