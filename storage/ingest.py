"""Ingest: input files -> cube stores, lazily and chunk by chunk.

:func:`open_input` opens any input (a file, several files, a directory or a glob) as the
float cube ingest would write, without reading pixels; :func:`ingest` encodes it and
writes a store. Later pipeline stages stream plain files through :func:`open_input`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .encodings import encode
from .errors import CubepipeError, FormatError, InputError
from .invalid import InvalidRule, mask_invalid
from .readers import check_input, detect_format, open_source
from .readers.bands import band_files, check_bands, stack_bands
from .readers.collection import check_same, expand_sources, stack_images
from .readers.image import open_colored
from .readers.npy import open_npy
from .sidecar import read_sidecar, sidecar_path
from .store import write_cube

__all__ = ["ingest", "ingest_params", "open_input", "write_input"]

Sources = str | os.PathLike | Sequence[str | os.PathLike]
#: How several files combine: ``images`` (a leading ``image`` dim) or ``bands``.
STACKS = ("images", "bands")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _requested(dtype: Any) -> np.dtype | None:
    """``dtype=`` checked: None, float32 or float64."""
    if dtype is None:
        return None
    try:
        target = np.dtype(dtype)
    except TypeError:
        target = None
    if target not in _FLOATS:
        raise InputError(f"dtype must be float32 or float64 (cubes are floats); got {dtype!r}")
    return target


def _target_dtype(path: Path, native: np.dtype, dtype: np.dtype | None) -> np.dtype:
    """The dtype policy (see :func:`open_input`)."""
    if dtype is not None:
        return dtype
    if native.kind == "f":  # float16 -> float32; float64 and wider (long double) -> float64
        return np.dtype(np.float64 if native.itemsize >= 8 else np.float32)
    if native.kind == "b" or (native.kind in "iu" and native.itemsize <= 2):
        return np.dtype(np.float32)
    if native.kind in "iu" and native.itemsize == 4:
        raise InputError(
            f"{path}: {native} values above 2**24 are not exact in float32; pass "
            "dtype='float64' (CLI: --dtype float64) to keep them exact, or dtype='float32' "
            "to accept rounding"
        )
    if native.kind in "iu":
        raise InputError(
            f"{path}: {native} values above 2**24 are not exact in float32 nor above 2**53 in "
            "float64; pass dtype='float64' (CLI: --dtype float64: ingest then stops at the "
            "first value that would change), or dtype='float32' to accept rounding"
        )
    raise FormatError(f"{path}: dtype {native} is not supported; expected real numbers")


def _nodata_value(native: np.dtype, nodata: Any) -> Any:
    """``nodata`` as a value of ``native`` (NaN allowed), or None if no value equals it."""
    if nodata is None or native.kind == "b":
        return None
    value = float(nodata)
    if native.kind == "f":
        return native.type(value)
    info = np.iinfo(native)
    if value.is_integer() and info.min <= value <= info.max:
        return native.type(int(value))
    return None


def _invalid(block: np.ndarray, nodata: Any) -> np.ndarray:
    return np.isnan(block) if np.isnan(nodata) else block == nodata


def _exact(native: np.dtype, target: np.dtype) -> bool:
    """Does every value of ``native`` survive the cast to the float ``target``?"""
    if native.kind == "b":
        return True
    if native.kind in "iu":
        return native.itemsize * 8 - (native.kind == "i") <= np.finfo(target).nmant + 1
    return native.kind == "f" and native.itemsize <= target.itemsize


def _first(block: np.ndarray, bad: np.ndarray) -> str:
    return str(block[np.unravel_index(int(np.argmax(bad)), bad.shape)])


def _check_cast(block: np.ndarray, out: np.ndarray, source: str, promised: bool) -> None:
    """Raise InputError if the cast of ``block`` to ``out`` overflowed, or (``promised``:
    the cast was chosen to be exact) changed a value."""
    if block.dtype.kind == "f":
        bad = np.isinf(out) & np.isfinite(block)
        if bad.any():
            raise InputError(
                f"{source}: {int(bad.sum())} {block.dtype} value(s) overflow {out.dtype} "
                f"(the first: {_first(block, bad)}, max {np.finfo(out.dtype).max:.7g}); "
                "ingest them as float64 (--dtype float64) or rescale the data first"
            )
    elif promised and block.dtype.kind in "iu":
        with np.errstate(invalid="ignore", over="ignore"):
            bad = out.astype(block.dtype) != block
        if bad.any():
            raise InputError(
                f"{source}: {int(bad.sum())} {block.dtype} value(s) in one block are not exact "
                f"in {out.dtype} (the first: {_first(block, bad)}; float64 holds integers "
                "exactly up to 2**53); pass --dtype float32 (dtype='float32') explicitly if "
                "rounding is acceptable"
            )


def _cast_block(
    block: np.ndarray,
    *,
    out_dtype: np.dtype,
    nodata: Any,
    source: str = "input",
    check: bool = False,
    promised: bool = False,
) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = block.astype(out_dtype)
    if check:
        _check_cast(block, out, source, promised)
    if nodata is not None:
        out[_invalid(block, nodata)] = np.nan
    return out


def _valid_block(block: np.ndarray, *, nodata: Any, axis: int) -> np.ndarray:
    return ~np.asarray(_invalid(block, nodata).any(axis=axis))  # an array: block is >= 2-D


def _restore_block(
    block: np.ndarray,
    *,
    scale: np.ndarray,
    offset: np.ndarray,
    nan_value: Any,
    axis: int,
    out_dtype: np.dtype,
    source: str = "input",
    block_info: Any = None,
) -> np.ndarray:
    b0, b1 = block_info[0]["array-location"][axis]
    shape = [1] * block.ndim
    shape[axis] = b1 - b0
    scale = scale[b0:b1].reshape(shape) if scale.size > 1 else scale
    offset = offset[b0:b1].reshape(shape) if offset.size > 1 else offset
    wide = block.astype(np.float64) * scale + offset
    with np.errstate(over="ignore"):
        out = wide.astype(out_dtype)
    _check_cast(wide, out, source, promised=False)
    if nan_value is not None:
        out[block == nan_value] = np.nan
    return out


def _per_band(side: Mapping[str, Any], key: str, nbands: int, path: Path) -> np.ndarray:
    values = np.atleast_1d(np.asarray(side[key], dtype=np.float64))
    if values.size not in (1, nbands):
        raise FormatError(
            f"{sidecar_path(path)}: {key} has {values.size} values for {nbands} bands; "
            "re-export the image"
        )
    return values


def _restore(
    path: Path, cube: xr.DataArray, side: Mapping[str, Any], dtype: np.dtype | None
) -> da.Array:
    native = cube.dtype
    if native.kind not in "iu" or int(side["bits"]) != native.itemsize * 8:
        raise FormatError(
            f"{sidecar_path(path)}: the sidecar describes {side['bits']}-bit integers but "
            f"{path} holds {native}; the sidecar belongs to another file (delete it)"
        )
    target = dtype if dtype is not None else np.dtype(np.float32)
    axis = cube.dims.index("band")
    return da.map_blocks(
        _restore_block,
        cube.data,
        scale=_per_band(side, "scale", cube.sizes["band"], path),
        offset=_per_band(side, "offset", cube.sizes["band"], path),
        nan_value=side.get("nan_value"),
        axis=axis,
        out_dtype=target,
        source=str(path),
        dtype=target,
        meta=np.empty((0,) * cube.ndim, dtype=target),
        token="cubepipe-ingest-sidecar",
    )


def _decode(path: Path, ds: xr.Dataset, dtype: np.dtype | None) -> xr.Dataset:
    """Cast one reader's Dataset to the float cube (sidecar, nodata and dtype policy)."""
    cube = ds["cube"]
    native = cube.dtype
    attrs = dict(cube.attrs)
    nodata = attrs.pop("nodata", None)
    attrs["cubepipe_source_dtype"] = str(native)
    out = ds.copy()
    side = read_sidecar(path)
    if side is not None:
        data = _restore(path, cube, side, dtype)
        attrs.update(max_abs_error=float(side["max_abs_error"]), cubepipe_encoding="sidecar")
        out["cube"] = (cube.dims, data, attrs)
        return out
    target = _target_dtype(path, native, dtype)
    value = _nodata_value(native, nodata)
    if nodata is not None:
        attrs["source_nodata"] = nodata
    data = cube.data
    if target != native or value is not None:
        data = da.map_blocks(
            _cast_block,
            data,
            out_dtype=target,
            nodata=value,
            source=str(path),
            check=not _exact(native, target),
            promised=target.itemsize == 8,
            dtype=target,
            meta=np.empty((0,) * cube.ndim, dtype=target),
            token="cubepipe-ingest-cast",
        )
    out["cube"] = (cube.dims, data, attrs)
    if value is not None:
        axis = cube.dims.index("band")
        raw = cube.data.rechunk({axis: -1})
        mask = da.map_blocks(
            _valid_block,
            raw,
            nodata=value,
            axis=axis,
            drop_axis=axis,
            dtype=bool,
            meta=np.empty((0,) * (cube.ndim - 1), dtype=bool),
            token="cubepipe-ingest-mask",
        )
        out["mask"] = (tuple(d for d in cube.dims if d != "band"), mask)
    return out


def _open_raw(
    path: Path,
    *,
    format: str,
    chunks: Mapping[str, int],
    layout: str | None,
    color: str | None = None,
    **options: Any,
) -> xr.Dataset:
    check_input(path)
    try:
        if color is not None:
            return open_colored(path, color=color, format=format)
        if layout is None:
            return open_source(path, format=format, chunks=chunks, **options)
        name = detect_format(path).name if format in ("auto", None) else format
        if name != "npy":
            raise InputError(
                f"{path}: layout= (--layout) applies to .npy files only; this is {name}"
            )
        return open_npy(path, chunks=chunks, layout=layout)
    except CubepipeError:
        raise
    except Exception as exc:  # a reader bug or an unforeseen damage: still name the file
        raise FormatError(f"{path}: could not be read ({type(exc).__name__}: {exc})") from exc


def _open(
    sources: Sources,
    format: str,
    chunks: Any,
    dtype: Any,
    layout: str | None,
    color: str | None = None,
    *,
    stack: str = "images",
    wavelengths: Sequence[float] | None = None,
    **options: Any,
) -> tuple[xr.Dataset, list[Path]]:
    dtype = _requested(dtype)
    if stack not in STACKS:
        raise InputError(f"unknown stack {stack!r}; expected one of: {', '.join(STACKS)}")
    if stack == "bands":
        paths = band_files(sources)
        raws = [
            _open_raw(
                p, format=format, chunks=dict(chunks or {}), layout=layout, color=color, **options
            )
            for p in paths
        ]
        check_bands(raws, paths)
        decoded = [_decode(p, ds, dtype) for p, ds in zip(paths, raws, strict=True)]
        return stack_bands(decoded, paths, wavelengths=wavelengths), paths
    if wavelengths is not None:
        raise InputError("wavelengths (--wavelengths) apply to band stacks (--stack bands) only")
    paths, collection = expand_sources(sources)
    chunks = dict(chunks or {})
    raws = [
        _open_raw(p, format=format, chunks=chunks, layout=layout, color=color, **options)
        for p in paths
    ]
    if not collection:
        return _decode(paths[0], raws[0], dtype), paths
    check_same(raws, paths)
    stacked = stack_images(
        [_decode(p, ds, dtype) for p, ds in zip(paths, raws, strict=True)], paths
    )
    stacked.attrs.pop("source", None)
    return stacked, paths


def open_input(
    sources: Sources,
    *,
    format: str = "auto",
    chunks: Mapping[str, int] | None = None,
    dtype: Any = None,
    layout: str | None = None,
    color: str | None = None,
    stack: str = "images",
    wavelengths: Sequence[float] | None = None,
    variable: str | None = None,
    dims: str | Sequence[str] | None = None,
    georef: bool = True,
) -> xr.Dataset:
    """Open input files lazily as the float cube :func:`ingest` would write.

    Parameters
    ----------
    sources
        A file, a directory, a glob pattern or a sequence of these. Several files, a
        directory or a glob form a collection: images stacked along a leading ``image``
        dim, padded when their sizes differ (see
        :func:`~cubepipe.storage.readers.collection.expand_sources`, :mod:`.dataset`).
    format
        ``auto`` (by content, then suffix) or a reader name: ``npy``, ``tiff``, ``png``,
        ``jpeg``, ``envi``, ``video``.
    chunks
        ``{dim: size}`` chunk sizes (``band`` whole and ``y``/``x`` 512 by default).
    dtype
        ``"float32"`` or ``"float64"``: overrides the dtype policy below.
    layout
        Axis order of ``.npy`` files (``"byx"``, ``"yxb"``, ...; see
        :mod:`~cubepipe.storage.readers.npy`).
    color
        ``"rgb"`` or ``"grey"``: give every PNG/JPEG image three bands or one (see
        :mod:`~cubepipe.storage.readers.image`); images of different sizes are padded
        into one cube (:mod:`~cubepipe.storage.dataset`).
    stack
        ``"images"`` (the default; see ``sources``) or ``"bands"``: single-band files of
        one size, dtype and grid become the bands of one ``(band, y, x)`` cube (see
        :mod:`~cubepipe.storage.readers.bands`; Landsat 8/9 band files get their
        wavelengths from a built-in table).
    wavelengths
        With ``stack="bands"``: one wavelength (nm) per file, in band order.
    variable, dims
        NetCDF/HDF5 inputs: the variable to read and the names of its dims that become
        ``(band, y, x)`` (see :mod:`~cubepipe.storage.readers.netcdf`).
    georef
        Read georeferencing (CRS and transform) into ``spatial_ref`` and ``y``/``x``
        coordinates (:mod:`~cubepipe.storage.geo`; needs rasterio, the ``geo`` extra,
        for files that have any); False skips it.

    Returns
    -------
    xarray.Dataset
        ``cube`` with dims ``(band, y, x)`` (``(image|frame, band, y, x)`` for
        collections and videos), float32 or float64, dask-backed: nothing is read until
        it is computed. Attr ``cubepipe_source_dtype`` records the file's dtype. A
        boolean ``mask`` (cube dims without ``band``, True = valid) is added when the
        reader reported a nodata value.

    Raises
    ------
    StoreNotFoundError, FormatError, InputError, MissingDependencyError

    Notes
    -----
    Dtype policy: (u)int8, (u)int16 and bool become float32 (exact); (u)int32 and
    (u)int64 are refused unless ``dtype`` is given (float32 would round values above
    2**24). ``dtype="float64"`` keeps (u)int32 exact, and for (u)int64 it is checked as
    it is written: a value above 2**53 that float64 would change stops the ingest with an
    :class:`InputError` (``dtype="float32"`` says rounding is acceptable). float16
    becomes float32; float32 is kept; float64 and wider floats (``np.longdouble``)
    become float64. ``dtype`` overrides all of these; a finite value that overflows the
    chosen float (1e300 asked to be float32, a long double beyond float64) stops the
    ingest with an :class:`InputError`, never becomes inf.

    Nodata: when a reader puts ``nodata`` in the cube's attrs (ENVI ``data ignore
    value``, GeoTIFF ``GDAL_NODATA``), values equal to it become NaN and ``mask`` is
    False wherever any band holds it; the value moves to attr ``source_nodata``.

    Sidecars: an image with a sidecar ``IMAGE.cubepipe.json`` (written by ``cubepipe
    export``) is restored as ``value = q * scale + offset`` in float32 (``dtype`` may ask
    for float64), NaN where ``q == nan_value``; attrs ``max_abs_error`` (from the
    sidecar) and ``cubepipe_encoding = "sidecar"`` record it.
    """
    return _open(
        sources,
        format,
        chunks,
        dtype,
        layout,
        color,
        stack=stack,
        wavelengths=wavelengths,
        **_reader_options(variable, dims, georef),
    )[0]


def _reader_options(variable: str | None, dims: Any, georef: bool) -> dict[str, Any]:
    """Reader options for :func:`~cubepipe.storage.readers.open_source` (None: not given)."""
    return {"variable": variable, "dims": dims, "georef": None if georef else False}


def write_input(
    ds: xr.Dataset,
    out: str | os.PathLike[str],
    *,
    inputs: Sequence[str | os.PathLike[str]] = (),
    encoding: str = "float32",
    chunks: Mapping[str, int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "cpu",
    params: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    durable: bool | None = None,
    shards: Mapping[str, int] | str | None = None,
) -> Path:
    """Encode a Dataset from :func:`open_input` and write it as a cube store.

    Parameters
    ----------
    ds
        The lazy cube from :func:`open_input`.
    out
        The store to write (a directory, conventionally ``NAME.zarr``).
    inputs
        The input files, recorded in the provenance entry.
    encoding
        ``float32`` (lossless), ``float16`` or ``int16-quantized`` (see
        :mod:`~cubepipe.storage.encodings`).
    chunks
        ``{dim: size}`` store chunks (pass the ones given to :func:`open_input`).
    resume, overwrite
        Finish an interrupted ingest into ``out``, or replace an existing store.
    device, params, provenance
        Recorded in the provenance entry (``op = "ingest"``; see
        :func:`~cubepipe.storage.write_cube`).
    durable
        Flush the chunks to disk before the store is marked complete (see
        :func:`~cubepipe.storage.write_cube`).
    shards
        zarr v3 sharding (``"auto"`` for image stacks and videos, or ``{dim: size}``;
        see :func:`~cubepipe.storage.write_cube`).

    Returns
    -------
    pathlib.Path
        ``out``, marked complete. A failure part-way (a damaged block in a file) leaves
        it marked incomplete; ``resume=True`` finishes it later.
    """
    return write_cube(
        encode(ds, encoding),
        out,
        op="ingest",
        params={**dict(params or {}), "encoding": encoding, "chunks": dict(chunks or {})},
        inputs=[str(p) for p in inputs],
        device=device,
        chunks=chunks,
        resume=resume,
        overwrite=overwrite,
        provenance=provenance,
        # +-inf in the input is data, kept bit for bit; encodings refuse what they cannot
        # represent themselves (storage.encodings).
        allow_nonfinite=True,
        durable=durable,
        shards=shards,
    )


def ingest(
    sources: Sources,
    out: str | os.PathLike,
    *,
    format: str = "auto",
    chunks: Mapping[str, int] | None = None,
    encoding: str = "float32",
    dtype: Any = None,
    layout: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "cpu",
    color: str | None = None,
    stack: str = "images",
    wavelengths: Sequence[float] | None = None,
    variable: str | None = None,
    dims: str | Sequence[str] | None = None,
    georef: bool = True,
    invalid: InvalidRule | None = None,
) -> Path:
    """Read input files into a new cube store, chunk by chunk.

    :func:`open_input` followed by :func:`write_input`; peak memory is a few chunks
    whatever the size of the input.

    Parameters
    ----------
    sources, format, chunks, dtype, layout, color, stack, wavelengths, variable, dims, georef
        As for :func:`open_input`.
    out, encoding, resume, overwrite, device
        As for :func:`write_input`.
    invalid
        Pixels to store as invalid in ``mask`` (``InvalidRule(values=(0.0,))``: any band
        equal to 0; see :mod:`~cubepipe.storage.invalid`), recorded in the history.

    Returns
    -------
    pathlib.Path
        ``out``, marked complete.
    """
    ds, paths = _open(
        sources,
        format,
        chunks,
        dtype,
        layout,
        color,
        stack=stack,
        wavelengths=wavelengths,
        **_reader_options(variable, dims, georef),
    )
    return write_input(
        mask_invalid(ds, invalid),
        out,
        inputs=paths,
        encoding=encoding,
        chunks=chunks,
        resume=resume,
        overwrite=overwrite,
        device=device,
        params=ingest_params(
            format=format,
            dtype=dtype,
            layout=layout,
            color=color,
            stack=stack,
            wavelengths=wavelengths,
            variable=variable,
            dims=dims,
            georef=georef,
            invalid=invalid,
        ),
    )


def ingest_params(
    *,
    format: str,
    dtype: Any,
    layout: str | None,
    color: str | None = None,
    stack: str = "images",
    wavelengths: Sequence[float] | None = None,
    variable: str | None = None,
    dims: str | Sequence[str] | None = None,
    georef: bool = True,
    invalid: InvalidRule | None = None,
) -> dict[str, Any]:
    """The reading options as recorded in an ingest's provenance entry (``color``,
    ``stack``, ``invalid``... only when given, so stores started before they existed
    still resume)."""
    later = {
        "color": color,
        "stack": None if stack == "images" else stack,
        "wavelengths": None if wavelengths is None else [float(w) for w in wavelengths],
        "variable": variable,
        "dims": dims if dims is None or isinstance(dims, str) else ",".join(dims),
        "georef": None if georef else False,
        "invalid": None if invalid is None else invalid.to_json(),
    }
    return {
        "format": format,
        "dtype": None if dtype is None else str(_requested(dtype)),
        "layout": layout,
        **{k: v for k, v in later.items() if v is not None},
    }
