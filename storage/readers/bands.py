"""``--stack bands``: single-band files of one grid stacked into one ``(band, y, x)`` cube.

Sensors that ship one file per band (Landsat's ``..._B1.TIF`` ... ``..._B11.TIF``) are
one cube, not a stack of images: :func:`band_files` lists the files (a glob or a folder
in natural order, so ``B2`` comes before ``B10``; files named one by one keep their
order), :func:`check_bands` refuses what cannot be one cube (a multi-band file, another
size, dtype or grid, a Landsat quality bitmask) naming the file, and :func:`stack_bands`
concatenates the lazy bands. Wavelengths come from ``wavelengths`` or, when every file is
a recognisable Landsat 8/9 OLI/TIRS band file, from :data:`LANDSAT_OLI_TIRS`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import FormatError, InputError
from ..geo import georef_of
from .collection import expand_sources

__all__ = ["LANDSAT_OLI_TIRS", "band_files", "check_bands", "landsat_band", "stack_bands"]

#: Landsat 8/9 OLI and TIRS bands: number -> (name, lower and upper band edge in nm),
#: from the USGS Landsat 8 Data Users Handbook (LSDS-1574), table 1-1. Centre wavelength
#: = the middle of the edges, fwhm = their distance.
LANDSAT_OLI_TIRS: dict[int, tuple[str, float, float]] = {
    1: ("coastal aerosol", 433.0, 453.0),
    2: ("blue", 450.0, 515.0),
    3: ("green", 525.0, 600.0),
    4: ("red", 630.0, 680.0),
    5: ("near infrared", 845.0, 885.0),
    6: ("SWIR 1", 1560.0, 1660.0),
    7: ("SWIR 2", 2100.0, 2300.0),
    8: ("panchromatic", 500.0, 680.0),
    9: ("cirrus", 1360.0, 1390.0),
    10: ("TIRS 1", 10600.0, 11190.0),
    11: ("TIRS 2", 11500.0, 12510.0),
}
_SCENE = r"(?:l[cot]0?[89]|l[89](?=[_-])|landsat[-_]?[89])"
#: ``LC08_L1TP_..._B4``, ``LC09_L2SP_..._SR_B4``, ``l8_B1``: a Landsat 8/9 band file.
_LANDSAT = re.compile(rf"^{_SCENE}.*[_-](?:sr_|st_)?b(?P<band>\d{{1,2}})$", re.IGNORECASE)
#: ``..._BQA``, ``..._QA_PIXEL``, ``..._QA_RADSAT``, ``..._SR_QA_AEROSOL``: quality masks.
_LANDSAT_QA = re.compile(rf"^{_SCENE}.*[_-](?:\w+_)?(?:bqa|qa(?:_\w+)?)$", re.IGNORECASE)


def _natural(path: Path) -> list[object]:
    """Sort key: digits compare as numbers (``B2`` before ``B10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def band_files(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The files of a band stack: each directory or glob in natural order, single paths
    in the order given (see :func:`~cubepipe.storage.readers.collection.expand_sources`)."""
    items = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    files: list[Path] = []
    for item in items:
        found, many = expand_sources(item)
        files += sorted(found, key=_natural) if many else found
    return list(dict.fromkeys(files))


def landsat_band(path: Path) -> int | None:
    """The Landsat 8/9 OLI/TIRS band number a file name says (``..._B4.TIF`` -> 4)."""
    match = _LANDSAT.match(Path(path).stem)
    band = int(match["band"]) if match else None
    return band if band in LANDSAT_OLI_TIRS else None


def _describe(cube: xr.DataArray) -> str:
    return "(" + ", ".join(f"{d}={n}" for d, n in cube.sizes.items()) + f") {cube.dtype}"


def check_bands(datasets: Sequence[xr.Dataset], paths: Sequence[Path]) -> None:
    """Raise :class:`FormatError` naming the first file that cannot be a band of the cube
    the first file starts: a quality bitmask, not one ``(band=1, y, x)`` image, another
    size or dtype, or another grid (CRS and transform, when georeferenced)."""
    first, grid = datasets[0]["cube"], georef_of(datasets[0])
    for ds, path in zip(datasets, paths, strict=True):
        cube = ds["cube"]
        if _LANDSAT_QA.match(path.stem):
            raise FormatError(
                f"{path}: is a Landsat quality band (a bitmask), not a spectral band; leave "
                f"it out of the stack, e.g. with a glob such as '{path.parent}/*_B[0-9]*"
                f"{path.suffix}'"
            )
        if cube.dims != ("band", "y", "x") or cube.sizes["band"] != 1:
            raise FormatError(
                f"{path}: is a {_describe(cube)} cube; --stack bands stacks single-band "
                "(y, x) files: ingest this file on its own or split its bands first"
            )
        if cube.shape != first.shape or cube.dtype != first.dtype:
            raise FormatError(
                f"{path}: band is {_describe(cube)} but the first file {paths[0]} is "
                f"{_describe(first)}; the bands of one cube share one size and dtype "
                "(resample or convert the files, or leave this one out)"
            )
        here = georef_of(ds)
        if (here is None) != (grid is None) or (
            here is not None
            and grid is not None
            and (
                here.crs_wkt != grid.crs_wkt
                or not np.allclose(here.transform, grid.transform, rtol=1e-9, atol=0)
            )
        ):
            raise FormatError(
                f"{path}: lies on another map grid (CRS or transform) than the first file "
                f"{paths[0]}; the bands of one cube share one grid (resample them onto "
                "one, e.g. with gdalwarp, or leave this one out)"
            )


def _band_coords(
    paths: Sequence[Path], wavelengths: Sequence[float] | None
) -> dict[str, tuple[str, np.ndarray, dict[str, str]]]:
    n = len(paths)
    numbers = [landsat_band(p) for p in paths]
    if wavelengths is not None:
        if len(wavelengths) != n:
            raise InputError(
                f"--wavelengths lists {len(wavelengths)} value(s) for {n} band file(s); give "
                "one wavelength in nm per file, in the order of the bands"
            )
        names = [p.stem for p in paths]
        wl = np.asarray(wavelengths, dtype=np.float64)
        coords = {"wavelength": ("band", wl, {"units": "nm"})}
    elif all(b is not None for b in numbers):
        table = [LANDSAT_OLI_TIRS[b] for b in numbers if b is not None]
        names = [f"B{b}" for b in numbers]
        centre = np.array([(lo + hi) / 2 for _, lo, hi in table])
        fwhm = np.array([hi - lo for _, lo, hi in table])
        source = {"units": "nm", "source": "Landsat 8/9 OLI/TIRS band table (USGS LSDS-1574)"}
        coords = {"wavelength": ("band", centre, source), "fwhm": ("band", fwhm, source)}
    else:
        names, coords = [p.stem for p in paths], {}
    if len(set(names)) == n:
        coords["band_name"] = ("band", np.array(names, dtype=object), {})
    return coords


def stack_bands(
    datasets: Sequence[xr.Dataset],
    paths: Sequence[Path],
    *,
    wavelengths: Sequence[float] | None = None,
) -> xr.Dataset:
    """Concatenate the single-band Datasets (as :func:`check_bands` accepted them, decoded
    to floats) along ``band``.

    Returns
    -------
    xarray.Dataset
        ``cube`` ``(band, y, x)``, lazy (each band read from its file); coordinates
        ``wavelength`` (nm) from ``wavelengths`` or the Landsat table (then ``fwhm`` too),
        ``band_name`` (Landsat ``B1``..., else the file names without suffix), and the
        first file's georeferencing; ``mask`` valid where every band is, if any file has
        one; attrs of the first file's cube.
    """
    first = datasets[0]
    data = da.concatenate([ds["cube"].data for ds in datasets], axis=0)
    keep = {k: v for k, v in first.coords.items() if "band" not in v.dims}
    out = xr.Dataset(
        {"cube": (("band", "y", "x"), data, dict(first["cube"].attrs))},
        coords={**keep, **_band_coords(paths, wavelengths)},
        attrs={k: v for k, v in first.attrs.items() if k != "source"} | {"stack": "bands"},
    )
    masks = [ds["mask"].data for ds in datasets if "mask" in ds]
    if masks:
        valid = masks[0]
        for m in masks[1:]:
            valid = valid & m
        out["mask"] = (("y", "x"), valid, dict(first["mask"].attrs) if "mask" in first else {})
    return out
