"""Georeferencing: a coordinate reference system (CRS) and an affine pixel -> map transform.

Stores keep them as rioxarray and GDAL do (CF ``grid_mapping`` / GeoZarr):

- a 0-d coordinate variable ``spatial_ref`` with attrs ``crs_wkt`` and ``spatial_ref``
  (the same WKT, GDAL's spelling) and ``GeoTransform`` (GDAL's six numbers
  ``"x0 dx rx y0 ry dy"``: the map position of the top left *corner* of pixel (0, 0));
- ``x`` and ``y`` coordinates holding the map positions of the pixel *centres*
  (left out when the transform is rotated, which 1-D coordinates cannot describe);
- attr ``grid_mapping = "spatial_ref"`` on every data variable with ``y`` and ``x`` dims.

The CRS comes from a maintained library, never from parsing WKT here: rasterio (GDAL),
the optional ``geo`` extra, reads it from GeoTIFF keys, ENVI ``map info`` /
``coordinate system string`` and NetCDF grid mappings, and writes it back into exported
GeoTIFFs. Files without georeferencing never need rasterio; a file with georeferencing
and no rasterio is one :class:`~cubepipe.storage.errors.MissingDependencyError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .errors import FormatError, MissingDependencyError

__all__ = [
    "GRID_MAPPING",
    "GeoRef",
    "assign_georef",
    "carry_georef",
    "crs_from_wkt",
    "crs_name",
    "georef_of",
    "read_georef",
    "rasterio_module",
    "write_georef",
]

#: Name of the grid-mapping coordinate (rioxarray's default).
GRID_MAPPING = "spatial_ref"
#: How to skip georeferencing, quoted in errors.
SKIP_HINT = "or ingest without georeferencing (--no-georef, georef=False)"
#: Marks of a CRS that GDAL could not identify (a fallback it made up).
_UNKNOWN = ('LOCAL_CS["unnamed"', 'ENGCRS["unnamed"', "unretrievable", 'GEOCCS["unnamed"')


def rasterio_module(feature: str) -> Any:
    """``import rasterio``, or :class:`MissingDependencyError` naming the ``geo`` extra."""
    try:
        import rasterio  # noqa: PLC0415 (optional: only georeferenced data need it)
    except ImportError:
        raise MissingDependencyError(feature, "rasterio", "geo") from None
    return rasterio


@dataclass(frozen=True)
class GeoRef:
    """A CRS (as WKT) and the affine transform ``(a, b, c, d, e, f)`` (rasterio's order):
    map ``x = a * col + b * row + c``, ``y = d * col + e * row + f`` at pixel corners."""

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]

    @property
    def rotated(self) -> bool:
        return self.transform[1] != 0 or self.transform[3] != 0

    def gdal(self) -> str:
        """GDAL's ``GeoTransform`` string ``"c a b f d e"`` (exact: ``repr`` floats)."""
        a, b, c, d, e, f = self.transform
        return " ".join(repr(float(v)) for v in (c, a, b, f, d, e))

    def centres(self, ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
        """``(y, x)`` map coordinates of the pixel centres (not rotated transforms)."""
        a, _, c, _, e, f = self.transform
        return f + e * (np.arange(ny) + 0.5), c + a * (np.arange(nx) + 0.5)


@contextlib.contextmanager
def _gdal_log() -> Iterator[list[str]]:
    """Collect what GDAL/PROJ say through rasterio's logger (instead of printing it)."""
    said: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    logger = logging.getLogger("rasterio._env")
    handler, propagate = _Keep(level=logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield said
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _checked_wkt(crs: Any, source: str | Path, what: str, said: list[str]) -> str:
    """The WKT of rasterio ``crs``, or a FormatError when there is none or GDAL could not
    identify it (it then makes up an unnamed local or 'unretrievable' one)."""
    fix = (
        f"set it, e.g. `gdal_edit.py -a_srs EPSG:32633 {Path(source).name}` with the right "
        f"EPSG code, {SKIP_HINT}"
    )
    if crs is None:
        raise FormatError(f"{source}: the {what} has a transform but no coordinate system; {fix}")
    wkt = str(crs.to_wkt())
    proj = [m for m in said if "not found" in m or "PROJ" in m]
    if proj or any(mark in wkt for mark in _UNKNOWN) or wkt.startswith(("LOCAL_CS", "ENGCRS")):
        detail = f" (GDAL: {proj[0]})" if proj else f" (GDAL made up {wkt[:60]}...)"
        raise FormatError(f"{source}: the {what} names an unknown coordinate system{detail}; {fix}")
    return wkt


def crs_from_wkt(text: str, *, source: str | Path, what: str) -> str:
    """Validate a WKT (or ``EPSG:n``) string with rasterio; its WKT as GDAL writes it."""
    rasterio = rasterio_module(f"{source}: reading the {what}")
    from rasterio.errors import CRSError  # noqa: PLC0415

    with _gdal_log() as said:
        try:
            crs = rasterio.crs.CRS.from_user_input(text.strip())
        except CRSError as exc:
            raise FormatError(
                f"{source}: the {what} is not a coordinate system GDAL knows ({exc}); "
                f"fix it, {SKIP_HINT}"
            ) from None
        return _checked_wkt(crs, source, what, said)


def read_georef(
    path: str | Path, *, what: str, source: str | Path | None = None, placed: bool = True
) -> GeoRef:
    """CRS and transform of the raster ``path`` (GeoTIFF, ENVI binary...) read by GDAL.

    Raises :class:`MissingDependencyError` without rasterio, :class:`FormatError` when
    GDAL cannot open the file or finds no (or an unknown) coordinate system, or (with
    ``placed``) no transform. ``placed=False``: the caller wants the CRS only.
    """
    source = source or path
    rasterio = rasterio_module(f"{source}: reading its {what}")
    with _gdal_log() as said, warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as src:
                crs, transform = src.crs, src.transform
        except rasterio.errors.RasterioError as exc:
            raise FormatError(
                f"{source}: GDAL could not read its {what} ({exc}); {SKIP_HINT}"
            ) from None
        wkt = _checked_wkt(crs, source, what, said)
    if placed and transform.is_identity:  # GDAL's stand-in when the file places no pixel
        raise FormatError(
            f"{source}: the {what} has a coordinate system but no transform (no tie point "
            f"or pixel size); set one, e.g. with `gdal_edit.py -a_ullr`, {SKIP_HINT}"
        )
    return GeoRef(wkt, tuple(float(v) for v in transform[:6]))  # type: ignore[arg-type]


def _pixel_vars(ds: xr.Dataset) -> list[str]:
    return [str(k) for k, v in ds.data_vars.items() if {"y", "x"} <= set(v.dims)]


def assign_georef(ds: xr.Dataset, georef: GeoRef) -> xr.Dataset:
    """``ds`` with ``spatial_ref``, ``y``/``x`` (not for rotated transforms) and
    ``grid_mapping`` on its pixel variables, as the module docstring says."""
    attrs = {"crs_wkt": georef.crs_wkt, "spatial_ref": georef.crs_wkt}
    attrs["GeoTransform"] = georef.gdal()
    coords: dict[str, Any] = {GRID_MAPPING: xr.Variable((), np.int64(0), attrs)}
    if not georef.rotated:
        y, x = georef.centres(ds.sizes["y"], ds.sizes["x"])
        coords["y"] = ("y", y, _axis_attrs(georef.crs_wkt, "y"))
        coords["x"] = ("x", x, _axis_attrs(georef.crs_wkt, "x"))
    out = ds.assign_coords(coords)
    for name in _pixel_vars(out):
        out[name].attrs["grid_mapping"] = GRID_MAPPING
    return out


def _axis_attrs(wkt: str, dim: str) -> dict[str, str]:
    """CF attrs of the ``x``/``y`` coordinates (geographic or projected, from the WKT)."""
    geographic = wkt.lstrip().startswith(("GEOGCS", "GEOGCRS", "GEOGRAPHICCRS"))
    if geographic:
        name = "longitude" if dim == "x" else "latitude"
        unit = "degrees_east" if dim == "x" else "degrees_north"
        return {"axis": dim.upper(), "standard_name": name, "units": unit}
    return {
        "axis": dim.upper(),
        "standard_name": f"projection_{dim}_coordinate",
        "long_name": f"{dim} coordinate of projection",
    }


def _parse_gt(text: Any) -> tuple[float, ...] | None:
    try:
        c, a, b, f, d, e = (float(v) for v in str(text).split())
    except (TypeError, ValueError):
        return None
    return (a, b, c, d, e, f)


def _regular(v: np.ndarray) -> float | None:
    """The constant step of the 1-D coordinate ``v``, or None."""
    steps = np.diff(v)
    if steps.size == 0 or not np.all(np.isfinite(steps)) or steps[0] == 0:
        return None
    return float(steps[0]) if np.allclose(steps, steps[0], rtol=1e-9, atol=0) else None


def georef_of(obj: xr.Dataset | xr.DataArray) -> GeoRef | None:
    """The georeferencing of a Dataset/DataArray, or None.

    The transform is ``GeoTransform`` when the ``x``/``y`` coordinates agree with it
    (or there are none); otherwise it is derived from regularly spaced coordinates (a
    subset made with ``isel`` keeps its place). Irregular coordinates give None.
    """
    if GRID_MAPPING not in obj.coords:
        return None
    attrs = obj.coords[GRID_MAPPING].attrs
    wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
    if not wkt:
        return None
    gt = _parse_gt(attrs.get("GeoTransform"))
    xy = [obj.coords[d].values if d in obj.coords else None for d in ("y", "x")]
    if xy[0] is None or xy[1] is None or xy[0].ndim != 1 or xy[1].ndim != 1:
        return None if gt is None else GeoRef(str(wkt), gt)  # type: ignore[arg-type]
    y, x = (np.asarray(v, dtype=np.float64) for v in xy)
    if gt is not None and not (gt[1] or gt[3]):
        ref = GeoRef(str(wkt), gt)  # type: ignore[arg-type]
        ry, rx = ref.centres(y.size, x.size)
        tol = 1e-6 * min(abs(gt[0]), abs(gt[4]))
        if np.allclose(ry, y, rtol=0, atol=tol) and np.allclose(rx, x, rtol=0, atol=tol):
            return ref
    dy = _regular(y) if y.size > 1 else (gt[4] if gt else None)
    dx = _regular(x) if x.size > 1 else (gt[0] if gt else None)
    if dx is None or dy is None:
        return None
    return GeoRef(str(wkt), (dx, 0.0, x[0] - dx / 2, 0.0, dy, y[0] - dy / 2))


def _source_dataset(source: str | os.PathLike[str]) -> xr.Dataset | None:
    """The coordinates of a store or input file, reading metadata only; None for inputs
    that cannot be georeferenced (a video, a PNG) and stores without ``spatial_ref``."""
    from .location import is_remote  # noqa: PLC0415
    from .store import store_state  # noqa: PLC0415

    text = str(source)
    if store_state(text) in ("complete", "incomplete", "foreign"):
        if is_remote(text):
            from .remote import zarr_store  # noqa: PLC0415

            target: Any = zarr_store(text, read_only=True)
        elif not (Path(text) / GRID_MAPPING).is_dir():
            return None
        else:
            target = text
        with warnings.catch_warnings():  # an unfinished store has no consolidated metadata
            warnings.simplefilter("ignore", RuntimeWarning)
            return xr.open_zarr(target, chunks=None, zarr_format=None)
    # the readers (tifffile, imagecodecs, PIL) only for a file: a store needs none of them
    from .ingest import open_input  # noqa: PLC0415 (ingest imports the readers, which import this)
    from .readers import READERS, detect_format  # noqa: PLC0415

    if not Path(text).is_file() or "georef" not in READERS[detect_format(text).name].options:
        return None  # a folder or glob of images, a video...: never georeferenced
    return open_input(text)


def carry_georef(out: xr.Dataset, source: xr.Dataset | str | os.PathLike[str]) -> xr.Dataset:
    """``out`` georeferenced like ``source`` (a Dataset, store or input file).

    Operations build their outputs from the data alone (PCA scores, reconstructions);
    this puts back ``spatial_ref``, the ``y``/``x`` coordinates and ``grid_mapping``
    when ``out`` has pixel variables of the source's ``y``/``x`` size and no
    ``spatial_ref`` of its own. ``source`` is opened (metadata only) only then.
    """
    pixels = _pixel_vars(out)
    if GRID_MAPPING in out.coords or not pixels:
        return out
    src = source if isinstance(source, xr.Dataset) else _source_dataset(source)
    if src is None or GRID_MAPPING not in src.coords:
        return out
    if any(src.sizes.get(d) != out.sizes[d] for d in ("y", "x")):
        return out  # another grid: the source's transform would place it wrongly
    coords: dict[str, Any] = {GRID_MAPPING: src.coords[GRID_MAPPING].variable}
    coords |= {d: src.coords[d].variable for d in ("y", "x") if d in src.coords}
    result = out.assign_coords(coords)
    for name in pixels:
        result[name].attrs["grid_mapping"] = GRID_MAPPING
    return result


def crs_name(georef: GeoRef) -> str:
    """A short name of the CRS (``EPSG:32633``, else the WKT's own name)."""
    rasterio = rasterio_module("naming a coordinate system")
    crs = rasterio.crs.CRS.from_wkt(georef.crs_wkt)
    code = crs.to_epsg()
    return f"EPSG:{code}" if code else str(crs.to_wkt()).split('"')[1]


def write_georef(path: str | Path, georef: GeoRef) -> None:
    """Write CRS and transform into the existing TIFF ``path`` as GeoTIFF keys (GDAL
    updates its first image's directory in place; the pixels are not touched)."""
    rasterio = rasterio_module(f"writing the georeferencing of {path}")
    from rasterio.transform import Affine  # noqa: PLC0415

    with _gdal_log(), warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "r+") as dst:
            dst.crs = rasterio.crs.CRS.from_wkt(georef.crs_wkt)
            dst.transform = Affine(*georef.transform)
