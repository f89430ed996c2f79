"""Collections of input files: directories, globs and lists, stacked along ``image``.

A directory, a glob or several paths (:func:`expand_sources`) become one Dataset with a
leading ``image`` dim (:func:`stack_images`, one chunk per image), in sorted path order,
and a ``source`` coordinate holding each file's path relative to their common folder.
All files must share their band count and dtype (:func:`check_same`); images of
different heights/widths are padded into one cube (:mod:`cubepipe.storage.dataset`).
Files of a directory that no reader recognises are left out (:func:`skipped_files`
names them).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from ..dataset import pad_images
from ..errors import FormatError, InputError
from ..location import local_path
from ..sidecar import SIDECAR_SUFFIX
from .base import READERS, SNIFF_BYTES, check_input

__all__ = ["check_same", "expand_sources", "skipped_files", "stack_images"]


def _readable(path: Path) -> bool:
    """Would a reader claim this file (by suffix or by its first bytes)?"""
    if path.suffix.lower() in {s for spec in READERS.values() for s in spec.suffixes}:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError:
        return False
    return any(spec.sniff(head, path) for spec in READERS.values())


def _listing(folder: Path) -> list[Path]:
    files = [
        f
        for f in sorted(folder.iterdir())
        if f.is_file() and not f.name.startswith(".") and not f.name.endswith(SIDECAR_SUFFIX)
    ]
    files = [f for f in files if _readable(f)]
    if not files:
        raise InputError(f"{folder}: the directory holds no file any reader recognises")
    return files


def skipped_files(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The files of the directories among ``sources`` that :func:`expand_sources` leaves
    out because no reader recognises them (``notes.txt``, a ``.webp``), to be reported."""
    items = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    skipped: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            skipped += [
                f
                for f in sorted(p.iterdir())
                if f.is_file()
                and not f.name.startswith(".")
                and not f.name.endswith(SIDECAR_SUFFIX)
                and not _readable(f)
            ]
    return skipped


def expand_sources(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
) -> tuple[list[Path], bool]:
    """The input files named by ``sources``, and whether they form a collection.

    Parameters
    ----------
    sources
        A path, a directory, a glob pattern (``"scans/*.tif"``) or a sequence of these.
        Directories contribute their non-hidden files that a reader recognises (by
        suffix or content), sidecars excluded; globs contribute every file they match.

    Returns
    -------
    (list of pathlib.Path, bool)
        Files in sorted order within each directory/glob (otherwise as given, duplicates
        dropped), and True when they are a collection (a directory, a glob, or several
        paths), which ingests as an ``image`` stack even if it holds a single file. An
        ENVI data file is dropped when its ``.hdr`` header is listed too.
    """
    items = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    if not items:
        raise InputError("no input given; expected a file, a directory or a glob pattern")
    files: list[Path] = []
    collection = len(items) > 1
    for item in items:
        # Absolute from here on: the readers' tasks may run in dask workers whose working
        # directory is not this process's.
        p = Path(os.path.abspath(local_path(item, "an input")))
        if p.is_dir():
            files += _listing(p)
            collection = True
        elif not p.exists() and any(c in str(item) for c in "*?["):
            matched = [Path(m) for m in sorted(glob.glob(str(p), recursive=True))]
            matched = [m for m in matched if m.is_file() and not m.name.endswith(SIDECAR_SUFFIX)]
            if not matched:
                raise InputError(
                    f"{item}: no file matches this pattern; check the folder and the pattern"
                )
            files += matched
            collection = True
        else:
            check_input(p)  # before anything opens it: a FIFO would block, /dev/zero never end
            files.append(p)
    files = list(dict.fromkeys(files))
    headers = {f for f in files if f.suffix.lower() == ".hdr"}
    files = [
        f
        for f in files
        if f in headers or not ({f.with_suffix(".hdr"), f.with_name(f.name + ".hdr")} & headers)
    ]
    return files, collection


def _describe(ds: xr.Dataset) -> str:
    cube = ds["cube"]
    return "(" + ", ".join(f"{d}={n}" for d, n in cube.sizes.items()) + f") {cube.dtype}"


def check_same(datasets: Sequence[xr.Dataset], paths: Sequence[Path]) -> None:
    """Raise :class:`FormatError` naming the first file unlike the first one.

    Every ``cube`` must have dims ``(band, y, x)`` and the first file's band count and
    dtype; heights and widths may differ (:func:`stack_images` pads them).
    """
    first = datasets[0]["cube"]
    for ds, path in zip(datasets, paths, strict=True):
        cube = ds["cube"]
        if cube.dims != ("band", "y", "x"):
            raise FormatError(
                f"{path}: is a {_describe(ds)} cube; a directory or glob stacks (band, y, x) "
                "images only: ingest this file on its own"
            )
        if cube.sizes["band"] != first.sizes["band"] or cube.dtype != first.dtype:
            colour = ds.attrs.get("format") in ("png", "jpeg") and cube.dtype == first.dtype
            raise FormatError(
                f"{path}: image is {_describe(ds)} but the first file {paths[0]} is "
                f"{_describe(datasets[0])}; a directory or glob ingests as one stack of "
                "images with the same bands and dtype (their sizes may differ): "
                + (
                    "pass --color rgb (or --color grey) to give every image the same channels"
                    if colour
                    else "convert them or ingest them separately"
                )
            )


def stack_images(datasets: Sequence[xr.Dataset], paths: Sequence[Path]) -> xr.Dataset:
    """Stack ``(band, y, x)`` Datasets along a new leading ``image`` dim.

    Parameters
    ----------
    datasets
        One Dataset per file, as checked by :func:`check_same`; a ``mask`` variable in
        any of them is stacked too (all-valid for those without one). Float cubes of
        different heights/widths are padded (:func:`~cubepipe.storage.dataset.pad_images`).
    paths
        The files, giving coordinate ``source`` (paths relative to their common folder).

    Returns
    -------
    xarray.Dataset
        ``cube`` ``(image, band, y, x)``, one chunk per image; band coordinates and cube
        attrs from the first file (``max_abs_error``: the largest of all files). Padded:
        NaN outside each image, and coordinates ``height``, ``width``.
    """
    first = datasets[0]
    if len({ds["cube"].shape for ds in datasets}) > 1:
        out = pad_images(datasets)
        cube, padded = out["cube"].data, out
    else:
        cube, padded = da.stack([ds["cube"].data for ds in datasets], axis=0), None
    attrs = dict(first["cube"].attrs)
    errors = [
        ds["cube"].attrs["max_abs_error"] for ds in datasets if "max_abs_error" in ds["cube"].attrs
    ]
    if errors:
        attrs["max_abs_error"] = max(errors)
    common = os.path.commonpath([str(p.resolve().parent) for p in paths])
    out = xr.Dataset(
        {"cube": (("image", "band", "y", "x"), cube, attrs)},
        coords={
            "source": (
                "image",
                np.array([os.path.relpath(p.resolve(), common) for p in paths], dtype=object),
            ),
            **{k: v for k, v in first.coords.items() if v.dims == ("band",)},
        },
        attrs=dict(first.attrs),
    )
    if padded is not None:
        out = out.assign_coords({k: padded[k] for k in ("height", "width")})
        return out.assign(mask=padded["mask"]) if "mask" in padded else out
    if any("mask" in ds for ds in datasets):
        ny, nx = first["cube"].sizes["y"], first["cube"].sizes["x"]
        masks = [
            ds["mask"].data if "mask" in ds else da.ones((ny, nx), dtype=bool, chunks=-1)
            for ds in datasets
        ]
        out["mask"] = (("image", "y", "x"), da.stack(masks, axis=0))
    return out
