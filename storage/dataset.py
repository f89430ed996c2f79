"""Image data sets of mixed sizes: one padded ``(image, band, y, x)`` cube.

Layout
------
A directory, glob or list of images whose heights and widths differ is stored as ONE cube
variable ``cube (image, band, y, x)`` sized to the largest height and the largest width,
each image in its top-left corner and NaN in the rest, with

- coordinates ``height (image)`` and ``width (image)`` (int64): each image's own size,
  so image ``i`` is ``cube[i, :, :height[i], :width[i]]``;
- coordinate ``source (image)``: each file's name (relative to the files' common folder);
- ``mask (image, y, x)`` only if some input had its own nodata mask (then False on the
  padding too). NaN and ``height``/``width`` already say where the padding is, and every
  operation leaves NaN out; a padding mask would be read and broadcast by each of them
  (it made ``stats`` ~40% slower on the photos below) for nothing.

Same-sized images are stacked exactly as before (no padding, no ``mask``, no
``height``/``width``). Both kinds are read back per file, at each file's own size, by
:func:`open_images` (lazy ``(name, DataArray)`` pairs) and :func:`save_images` (one
``.npy`` per file).

Why one padded array and not one array (subgroup) per image: the padded cube *is* the
image-data-set cube of the store contract (DESIGN.md), so every operation and promise
that already exists applies unchanged: one writer and its lock, completion marker last,
``--resume`` and ``--overwrite``; ``stats`` (NaN and ``mask`` are left out, so the pooled
float64 statistics are over the images' own pixels only, merged by the same Chan
reduction), ``standardize``/``destandardize`` (padding stays NaN), ``compress``,
``filter``, ``export``, ``info``, the YAML runner and any per-image sampler, one
sample per ``image`` index. Plain xarray reads it as one array (``xr.open_zarr(path)``,
then crop with ``height``/``width``). Per-image subgroups would have needed a second
writer, a second resume and completion scheme, and a pooled variant of every operation.

The cost is padding: the store holds ``n * max(height) * max(width)`` pixels per band.
Chunks lying wholly in the padding are NaN: stored in 0.4% of their size (blosc-lz4), but
they are still read and computed (the ``info`` summary reports ``filled``, the fraction
of real pixels). Portrait and landscape photos of one camera (4000x3000 and 3000x4000)
fill 75%, a detection data set of 640x480 and 480x640 images 75%; the 24 photos of
../shared/data/photos and their 2/3-size copies (200 to 1411 pixels a side) fill 16%,
so there ``stats`` and ``standardize`` read about 6x the pixels a per-image layout
would (still 2-4 s each on 2 cores, 20 MiB on disk for 24 images). A data set mixing
thumbnails with a few very large images is better resized, or split into groups of
similar size, before ingest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from .errors import InputError, StoreExistsError
from .layout import default_chunks
from .store import open_cube

__all__ = [
    "HEIGHT",
    "WIDTH",
    "describe_images",
    "iter_images",
    "open_images",
    "pad_images",
    "save_images",
]

#: Coordinates (over ``image``) holding each image's own size.
HEIGHT, WIDTH = "height", "width"
_PAD_NOTE = "pixels at y >= height or x >= width are padding (NaN)"


def _grid(nb: int, ny: int, nx: int, itemsize: int) -> tuple[int, int, int]:
    """The store's ``(band, y, x)`` chunk shape for one padded image (layout defaults)."""
    c = default_chunks({"band": nb, "y": ny, "x": nx}, itemsize)
    return c["band"], c["y"], c["x"]


def _padded(data: da.Array, ny: int, nx: int, fill: Any, chunks: tuple[int, ...]) -> da.Array:
    """``data (..., y, x)`` padded at the bottom/right to ``(ny, nx)`` with ``fill``, on
    the store's chunk grid (chunks wholly in the padding never touch ``data``)."""
    h, w = data.shape[-2:]
    if (h, w) != (ny, nx):
        width = [(0, 0)] * (data.ndim - 2) + [(0, ny - h), (0, nx - w)]
        data = da.pad(data, width, mode="constant", constant_values=fill)
    return data.rechunk(chunks)


def pad_images(datasets: Sequence[xr.Dataset]) -> xr.Dataset:
    """Stack ``(band, y, x)`` cubes of different heights/widths into one padded cube.

    Parameters
    ----------
    datasets
        One Dataset per image with a float ``cube (band, y, x)`` (same band count and
        dtype) and optionally a bool ``mask (y, x)``, e.g. from
        :func:`~cubepipe.storage.ingest.open_input`.

    Returns
    -------
    xarray.Dataset
        ``cube (image, band, y, x)`` of ``max(height) x max(width)``, NaN outside each
        image; coordinates ``height`` and ``width`` (int64, over ``image``); ``mask
        (image, y, x)`` only if an input had one (False on the padding). Lazy: chunked
        like the store (one image per chunk, ``y``/``x`` 512), so a chunk wholly in the
        padding is a constant that reads no file.
    """
    cubes = [ds["cube"] for ds in datasets]
    if any(c.dtype.kind != "f" for c in cubes):
        raise InputError("padding needs float cubes (NaN marks the padding); decode them first")
    heights = np.array([c.sizes["y"] for c in cubes], dtype=np.int64)
    widths = np.array([c.sizes["x"] for c in cubes], dtype=np.int64)
    ny, nx = int(heights.max()), int(widths.max())
    nb = cubes[0].sizes["band"]
    grid = _grid(nb, ny, nx, cubes[0].dtype.itemsize)
    cube = da.stack([_padded(c.data, ny, nx, np.nan, grid) for c in cubes], axis=0)
    coords = {
        HEIGHT: ("image", heights, {"long_name": "image height before padding", "note": _PAD_NOTE}),
        WIDTH: ("image", widths, {"long_name": "image width before padding", "note": _PAD_NOTE}),
    }
    out = xr.Dataset({"cube": (("image", "band", "y", "x"), cube)}, coords=coords)
    if any("mask" in ds for ds in datasets):  # the inputs' own nodata masks
        masks = [
            ds["mask"].data if "mask" in ds else da.ones(ds["cube"].shape[1:], bool, chunks=-1)
            for ds in datasets
        ]
        mask = da.stack([_padded(m, ny, nx, False, grid[1:]) for m in masks], axis=0)
        out["mask"] = (("image", "y", "x"), mask)
    return out


def iter_images(ds: xr.Dataset, *, variable: str = "cube") -> Iterator[tuple[str, xr.DataArray]]:
    """Yield ``(name, image)`` for each image of ``ds``, cropped to its own size.

    Parameters
    ----------
    ds
        A Dataset whose ``variable`` has dims ``(image, band, y, x)`` (padded or not) or
        ``(band, y, x)`` (one image), e.g. from :func:`~cubepipe.storage.open_cube`.

    Yields
    ------
    (str, xarray.DataArray)
        The file name (coordinate ``source``; the image index if there is none, the
        Dataset's ``source`` attr for a single image) and ``(band, y, x)``, lazy (dask),
        in the variable's dtype, padding cut off.
    """
    if variable not in ds:
        raise InputError(f"no variable {variable!r} here (it has {', '.join(map(str, ds))})")
    cube = ds[variable]
    if cube.dims == ("band", "y", "x"):
        yield str(ds.attrs.get("source", cube.attrs.get("source", "0"))), cube
        return
    if cube.dims != ("image", "band", "y", "x"):
        raise InputError(
            f"variable {variable!r} has dims {cube.dims}; expected (image, band, y, x) or "
            "(band, y, x)"
        )
    n = cube.sizes["image"]
    names = ds["source"].values if "source" in ds.coords else np.arange(n)
    padded = HEIGHT in ds.coords and WIDTH in ds.coords
    heights = ds[HEIGHT].values if padded else np.full(n, cube.sizes["y"])
    widths = ds[WIDTH].values if padded else np.full(n, cube.sizes["x"])
    for i in range(n):
        image = cube.isel(image=i, y=slice(0, int(heights[i])), x=slice(0, int(widths[i])))
        yield str(names[i]), image.drop_vars([HEIGHT, WIDTH], errors="ignore")


def open_images(
    store: str | os.PathLike[str], *, variable: str = "cube", allow_incomplete: bool = False
) -> Iterator[tuple[str, xr.DataArray]]:
    """Read a store's images back one by one: ``(file name, (band, y, x) DataArray)``.

    ``store`` is any cube store, e.g. one written by ``cubepipe ingest DIR`` or by
    ``cubepipe standardize`` from it; see :func:`iter_images`. Nothing is read until an
    image is computed (``image.values``), so memory stays at one image.

    Examples
    --------
    >>> for name, image in open_images("standardized.zarr"):  # doctest: +SKIP
    ...     pixels = image.values  # float32 (band, y, x), this file's own size
    """
    ds = open_cube(os.fspath(store), allow_incomplete=allow_incomplete)
    yield from iter_images(ds, variable=variable)


def save_images(
    store: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    variable: str = "cube",
    overwrite: bool = False,
) -> list[Path]:
    """Write each image of ``store`` to its own ``.npy`` file, at its own size.

    Parameters
    ----------
    store
        A cube store (see :func:`open_images`), e.g. the output of ``cubepipe
        standardize``.
    folder
        Where to write: ``FOLDER/<file name>.npy`` (``rocket.jpg`` -> ``rocket.jpg.npy``,
        so ``a.png`` and ``a.jpg`` stay apart; subfolders of the names are kept).
    overwrite
        Replace existing files (else :class:`StoreExistsError` before anything is written).

    Returns
    -------
    list of pathlib.Path
        The files, in image order; each holds ``(band, y, x)`` in the variable's dtype
        (float32 for ingested or standardized stores), read one image at a time.
    """
    root = Path(folder).resolve()
    plan = []
    for name, image in open_images(store, variable=variable):
        target = (root / f"{name}.npy").resolve()
        if not target.is_relative_to(root):
            raise InputError(f"{store}: image name {name!r} would be written outside {root}")
        if target.exists() and not overwrite:
            raise StoreExistsError(f"{target} already exists: pass overwrite=True to replace it")
        plan.append((target, image))
    for target, image in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".partial")
        with part.open("wb") as fh:
            np.save(fh, image.values)
        os.replace(part, target)  # never a half-written .npy under the final name
    return [t for t, _ in plan]


def describe_images(group: zarr.Group) -> dict[str, Any] | None:
    """The ``images`` summary of ``cubepipe info``, or None if the store is not an image
    data set. Reads only the small ``height``/``width``/``source`` arrays.

    Keys: ``count``, ``padded`` (bool), ``height`` and ``width`` (``[min, max]``),
    ``filled`` (real pixels / stored pixels, 1.0 without padding), ``names`` (the first
    five file names).
    """
    members: dict[str, Any] = dict(group.arrays())
    cube = members.get("cube")
    if cube is None or cube.ndim != 4 or _dims(cube)[:1] != ["image"]:
        return None
    n, ny, nx = int(cube.shape[0]), int(cube.shape[2]), int(cube.shape[3])
    padded = HEIGHT in members and WIDTH in members
    h = np.asarray(members[HEIGHT][...]) if padded else np.full(n, ny)
    w = np.asarray(members[WIDTH][...]) if padded else np.full(n, nx)
    names: list[str] = []
    if "source" in members:
        names = [str(v) for v in np.asarray(members["source"][...])[:5]]
    else:  # text coordinates kept in the root attrs (store.TEXT_ATTR)
        text = group.attrs.get("cubepipe_text_coords")
        source = text.get("source") if isinstance(text, Mapping) else None
        values = source.get("values") if isinstance(source, Mapping) else None
        if isinstance(values, list):
            names = [str(v) for v in values[:5]]
    return {
        "count": n,
        "padded": padded,
        "height": [int(h.min()), int(h.max())] if n else [0, 0],
        "width": [int(w.min()), int(w.max())] if n else [0, 0],
        "filled": float((h * w).sum() / (n * ny * nx)) if n * ny * nx else 1.0,
        "names": names,
    }


def _dims(arr: Any) -> list[str]:
    names = getattr(arr.metadata, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS")
    return [str(d) for d in names] if names else []
