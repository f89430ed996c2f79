"""NumPy ``.npy`` reader: memory-mapped, never unpickled.

The header is parsed without loading anything; every dask block then maps the file
(``np.load(mmap_mode="r", allow_pickle=False)``) and copies out only its own slice, so
peak memory is one block whatever the size of the file. Arrays of Python objects (the
only ``.npy`` files that need pickle) are refused: loading them can run arbitrary code.

Axis order (``layout``)
-----------------------
A ``.npy`` file carries no axis names, so the reader applies one rule, recorded in the
cube's ``source_layout`` attribute, and ``layout=`` overrides it:

- 2-D arrays are ``(y, x)`` and become one band (``layout="xy"`` transposes).
- 3-D arrays ``(n0, n1, n2)``: the band axis is one of the two end axes. If exactly one
  end axis has the length of the middle axis (a square image), the *other* end axis is
  the band axis; otherwise the *shorter* end axis is, ties going to ``(band, y, x)``.
  So ``(15, 2500, 2500)`` is ``"byx"``, ``(145, 145, 200)`` (Indian Pines) and
  ``(512, 640, 3)`` (an RGB image) are ``"yxb"``.
- 4-D arrays are a stack of images: the first axis is ``image`` and the rule above
  applies to the other three.

``layout`` spells the file's axes in order with the letters ``b`` (band), ``y``, ``x``
and, for 4-D arrays, ``i`` (image): ``"byx"``, ``"yxb"``, ``"ibyx"``, ``"xy"``, ...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import FormatError, InputError
from ..layout import default_chunks
from .base import ReaderSpec, register

__all__ = ["block_array", "default_layout", "open_npy", "read_header"]

_MAGIC = b"\x93NUMPY"
_AXIS_DIM = {"i": "image", "b": "band", "y": "y", "x": "x"}


def block_array(
    read_block: Callable[..., np.ndarray],
    *args: Any,
    shape: Sequence[int],
    dtype: np.dtype,
    dims: Sequence[str],
    chunks: Mapping[str, int] | None,
    token: str,
) -> da.Array:
    """A dask array whose blocks are read from a file only when computed.

    Parameters
    ----------
    read_block
        Module-level function ``read_block(*args, block_info=...) -> numpy.ndarray``; it
        finds its slice in ``block_info[None]["array-location"]`` (one ``(start, stop)``
        per dim) and must return exactly that part of the array in ``dtype``.
    *args
        Small picklable arguments (a path, offsets), the same for every block.
    shape, dtype, dims
        The whole array.
    chunks
        ``{dim: size}`` overrides; other dims follow
        :func:`~cubepipe.storage.layout.default_chunks`, sized for the (at least 4-byte)
        float cube that ingest writes, so that ingest never has to rechunk.
    token
        Task-name prefix, starting with ``cubepipe-ingest`` (``cubepipe-ingest-read-npy``).
    """
    dtype = np.dtype(dtype)
    sizes = dict(zip(dims, shape, strict=True))
    sizes_chunks = default_chunks(sizes, max(dtype.itemsize, 4), overrides=chunks or {})
    block_chunks = tuple(_split(n, sizes_chunks[d]) for d, n in zip(dims, shape, strict=True))
    return da.map_blocks(
        read_block,
        *args,
        chunks=block_chunks,
        dtype=dtype,
        meta=np.empty((0,) * len(shape), dtype=dtype),
        token=token,
    )


def _split(n: int, size: int) -> tuple[int, ...]:
    size = max(1, int(size))
    return tuple(min(size, n - start) for start in range(0, n, size)) or (0,)


# -- the .npy format -----------------------------------------------------------------------


def _sniff(head: bytes, path: Path) -> bool:
    return head.startswith(_MAGIC)


def read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data_offset)`` of a ``.npy`` file from its header alone (nothing is
    unpickled, nothing allocated); a :class:`FormatError` if it is not one."""
    fmt = np.lib.format
    try:
        with path.open("rb") as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(fh)
            else:
                raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
            offset = fh.tell()
    except Exception as exc:  # numpy raises ValueError, but a damaged header may do anything
        raise FormatError(
            f"{path}: not a readable .npy file ({exc}); expected an array saved by numpy.save"
        ) from exc
    return tuple(int(n) for n in shape), np.dtype(dtype), offset


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise FormatError(
            f"{path}: the array contains Python objects (pickled); cubepipe never unpickles "
            "files because loading a pickle can run arbitrary code. Save a numeric array "
            "instead (numpy.save(path, arr.astype('float32')))"
        )
    if dtype.names is not None or dtype.subdtype is not None:
        raise FormatError(
            f"{path}: structured dtype {dtype} is not a numeric image; save one numeric "
            "array (one field) per file"
        )
    if dtype.kind not in "biuf":
        raise FormatError(
            f"{path}: dtype {dtype} is not supported; expected integer, float or bool data"
        )


def default_layout(shape: Sequence[int]) -> str:
    """The axis order the reader assumes for an array of ``shape`` (module docstring)."""
    if len(shape) == 2:
        return "yx"
    if len(shape) == 4:
        return "i" + default_layout(shape[1:])
    n0, n1, n2 = shape
    if n1 == n2 and n0 != n1:
        return "byx"
    if n0 == n1 and n2 != n1:
        return "yxb"
    return "yxb" if n2 < n0 else "byx"


def _check_layout(path: Path, layout: str, ndim: int) -> str:
    letters = {2: "yx", 3: "byx", 4: "ibyx"}[ndim]
    layout = layout.lower().replace(",", "").replace(" ", "")
    if sorted(layout) != sorted(letters):
        raise InputError(
            f"{path}: layout {layout!r} does not fit a {ndim}-D array; expected the letters "
            f"{', '.join(letters)} once each in file order, e.g. {letters!r}"
        )
    return layout


def _read_npy(
    path: str, perm: tuple[int, ...], squeeze_band: bool, dtype: str, block_info: Any = None
) -> np.ndarray:
    """One block: the file is memory-mapped, only this block's slice is copied."""
    loc = block_info[None]["array-location"]
    out_slices = [slice(a, b) for a, b in loc]
    if squeeze_band:  # a 2-D file: the band dim (always 0..1) is added here
        out_slices = out_slices[1:]
    file_slices = [slice(None)] * len(perm)
    for out_axis, file_axis in enumerate(perm):
        file_slices[file_axis] = out_slices[out_axis]
    try:
        mm = np.load(path, mmap_mode="r", allow_pickle=False)
        block = np.transpose(mm[tuple(file_slices)], perm)
        out = np.array(block, dtype=np.dtype(dtype), order="C")
    except Exception as exc:
        raise FormatError(f"{path}: reading a block of the .npy file failed: {exc}") from exc
    return out[np.newaxis] if squeeze_band else out


def open_npy(
    path: str | Path, *, chunks: Mapping[str, int] | None = None, layout: str | None = None
) -> xr.Dataset:
    """Open a ``.npy`` file lazily as a cube Dataset.

    Parameters
    ----------
    path
        A file written by :func:`numpy.save` (C or Fortran order, any byte order).
    chunks
        ``{dim: size}`` chunk sizes; missing dims use the store defaults.
    layout
        The file's axis order (``"byx"``, ``"yxb"``, ``"yx"``, ``"ibyx"``, ...); default:
        the rule in the module docstring.

    Returns
    -------
    xarray.Dataset
        Variable ``cube`` with dims ``(band, y, x)`` (``(image, band, y, x)`` for 4-D
        files) in the file's dtype (native byte order), backed by dask.

    Raises
    ------
    FormatError
        Not an ``.npy`` file, truncated, object (pickled) or structured dtype, or not
        2-D to 4-D.
    """
    p = Path(path)
    shape, dtype, offset = read_header(p)
    _check_dtype(p, dtype)
    if len(shape) not in (2, 3, 4) or 0 in shape:
        raise FormatError(
            f"{p}: array of shape {shape} cannot be a cube; expected a non-empty 2-D (y, x), "
            "3-D (band, y, x) / (y, x, band) or 4-D (image, ...) array"
        )
    # Python integers: a lying header such as (2**32, 2**32, 4) wraps to 0 in int64
    expected = offset + math.prod(shape) * dtype.itemsize
    if p.stat().st_size < expected:
        raise FormatError(
            f"{p}: the file is truncated or its header is damaged: the header promises "
            f"{expected} bytes for {dtype}{shape}, the file has {p.stat().st_size}; copy or "
            "save it again"
        )
    chosen = _check_layout(p, layout, len(shape)) if layout else default_layout(shape)
    out_letters = "ibyx" if len(shape) == 4 else ("byx" if len(shape) == 3 else "yx")
    perm = tuple(chosen.index(c) for c in out_letters)
    out_shape = tuple(shape[i] for i in perm)
    squeeze_band = len(shape) == 2
    if squeeze_band:
        out_shape = (1, *out_shape)
        out_letters = "byx"
    native = dtype.newbyteorder("=")
    dims = tuple(_AXIS_DIM[c] for c in out_letters)
    data = block_array(
        _read_npy,
        str(p),
        perm,
        squeeze_band,
        native.str,
        shape=out_shape,
        dtype=native,
        dims=dims,
        chunks=chunks,
        token="cubepipe-ingest-read-npy",
    )
    cube = xr.Variable(dims, data, attrs={"source_layout": chosen})
    return xr.Dataset({"cube": cube}, attrs={"source": str(p), "format": "npy"})


register(ReaderSpec(name="npy", suffixes=(".npy",), sniff=_sniff, open=open_npy))
