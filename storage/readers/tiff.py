"""TIFF and BigTIFF reader (tifffile): pages and samples become bands, read per block.

The first image series of the file is the cube: its ``Y`` and ``X`` axes are ``y`` and
``x``; every other axis (pages, samples, ImageJ ``Z``/``C``/``T``...) is flattened, in
file order, into ``band``. So a multi-page file of single-sample pages is
``(pages, y, x)`` and an RGB image is ``(3, y, x)``.

Laziness: pages stored raw and in one piece are memory-mapped and each block copies only
its window; other data are read through tifffile's zarr store, which decodes the strips
or tiles a block overlaps, whole. So for those, blocks are cut along strip/tile borders
(full-width row bands for strips): each strip or tile is decoded once per read pass,
and the store is rechunked as it is written. A strip or tile that would decode to more
than :data:`DECODE_BUDGET` (a 1.5 MB deflate strip can inflate to gigabytes) is refused
at open, from the header alone, with a message saying how to re-save the file.

Validation at open: the header must parse, every strip/tile of the series must lie inside
the file (this catches truncated files) and the compression must be decodable; errors
while reading a block are re-raised as :class:`~cubepipe.storage.errors.FormatError`
naming the file.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import xarray as xr
import zarr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from dask.typing import Key

from ..errors import CubepipeWarning, FormatError, MissingDependencyError
from ..geo import assign_georef, read_georef
from ..layout import MAX_CHUNK_BYTES, default_chunks
from .base import ReaderSpec, register
from .npy import block_array

__all__ = ["open_tiff"]

_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_GDAL_NODATA = "GDAL_NODATA"
#: GeoTIFF tags: ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory.
_GEO_TAGS = (33550, 33922, 34264, 34735)
#: The most one strip or tile may decode to (bytes); larger ones are refused at open.
DECODE_BUDGET = 512 * 2**20

# tifffile reports oddities through the logging module; while cubepipe parses a file those
# records are collected (and quoted in errors) instead of printed on stderr.
_capture = threading.local()


class _CaptureFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        sink = getattr(_capture, "sink", None)
        if sink is None:
            return True
        sink.append(record.getMessage())
        return False


_FILTER = _CaptureFilter()


@contextlib.contextmanager
def _tifffile_log() -> Iterator[list[str]]:
    logger = logging.getLogger("tifffile")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    previous = getattr(_capture, "sink", None)
    sink: list[str] = []
    _capture.sink = sink
    try:
        yield sink
    finally:
        _capture.sink = previous


def _sniff(head: bytes, path: Path) -> bool:
    return head[:4] in _MAGICS


def _fail(path: Path, problem: str, log: list[str]) -> FormatError:
    said = f" (tifffile: {log[0]})" if log else ""
    return FormatError(f"{path}: {problem}{said}")


def _check_series(path: Path, tif: tifffile.TiffFile, log: list[str]) -> tifffile.TiffPageSeries:
    if not tif.series:
        raise _fail(path, "the TIFF file holds no image; expected at least one page", log)
    series = tif.series[0]
    keyframe = series.keyframe
    listed = list(series.pages)
    pages = [page for page in listed if page is not None]
    if len(pages) < len(listed) or len(listed) * keyframe.size != series.size:
        raise _fail(
            path,
            f"damaged or truncated TIFF: the image is {series.shape} but only "
            f"{len(pages)} of its pages could be read; "
            "copy or download the file again",
            log,
        )
    size = path.stat().st_size
    for page in pages:
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
            if count and (offset <= 0 or offset + count > size):
                raise _fail(
                    path,
                    f"truncated or damaged TIFF: image data at bytes {offset}..{offset + count}"
                    f" lie beyond the end of the {size}-byte file; copy or download it again",
                    log,
                )
    for table, code, what in (
        (tifffile.TIFF.DECOMPRESSORS, keyframe.compression, "compression"),
        (tifffile.TIFF.UNPREDICTORS, keyframe.predictor, "predictor"),
    ):
        try:
            table[code]
        except KeyError as exc:
            name = getattr(code, "name", str(code))
            if "imagecodecs" in str(exc):
                raise MissingDependencyError(
                    f"{path}: reading TIFF {what} {name}", "imagecodecs", None
                ) from exc
            raise _fail(path, f"TIFF {what} {name} is not supported", log) from exc
    return series


def _inspect(path: Path) -> dict[str, Any]:
    """Parse and validate the file; return what block reads need (small, picklable)."""
    with _tifffile_log() as log:
        try:
            with tifffile.TiffFile(path) as tif:
                series = _check_series(path, tif, log)
                keyframe = series.keyframe
                nodata = keyframe.tags.valueof(_GDAL_NODATA)
                info = {
                    "shape": tuple(int(n) for n in series.shape),
                    "axes": series.axes,
                    "dtype": np.dtype(series.dtype).newbyteorder("="),
                    "file_dtype": np.dtype(tif.byteorder + np.dtype(series.dtype).char),
                    "page_shape": tuple(int(n) for n in keyframe.shape),
                    "page_axes": keyframe.axes,
                    "page_offsets": _contiguous_pages(path, series),
                    "rgb": keyframe.photometric == tifffile.PHOTOMETRIC.RGB,
                    "nodata": nodata,
                    "geo": any(code in keyframe.tags for code in _GEO_TAGS),
                    "n_series": len(tif.series),
                    **_chunking(keyframe),
                }
                if info["page_offsets"] is None:
                    _check_budget(path, keyframe, info["decoded"])
        except (FormatError, MissingDependencyError):
            raise
        except Exception as exc:
            with path.open("rb") as fh:
                head = fh.read(4)
            if head not in _MAGICS:
                raise FormatError(
                    f"{path}: not a TIFF file (it starts with {head!r}, expected a TIFF or "
                    "BigTIFF header II*\\0, MM\\0*, II+\\0 or MM\\0+); the file is damaged "
                    "or its suffix is wrong (pass --format to choose a reader)"
                ) from exc
            raise _fail(
                path, f"damaged TIFF ({type(exc).__name__}: {exc}); copy it again", log
            ) from exc
    return info


def _chunking(keyframe: tifffile.TiffPage) -> dict[str, Any]:
    """How the page is cut for storage: one strip's or tile's ``(y, x)`` extent, its
    decoded size in bytes, and how many consecutive bands one strip/tile holds."""
    ny, nx = int(keyframe.imagelength), int(keyframe.imagewidth)
    if keyframe.is_tiled:
        extent = (int(keyframe.tilelength), int(keyframe.tilewidth))
    else:
        extent = (min(int(keyframe.rowsperstrip or ny), ny), nx)
    contig = keyframe.planarconfig == 1 and keyframe.samplesperpixel > 1
    decoded = math.prod(int(n) for n in keyframe.chunks) * np.dtype(keyframe.dtype).itemsize
    return {
        "extent": (max(1, extent[0]), max(1, extent[1])),
        "decoded": decoded,
        "granule": int(keyframe.samplesperpixel) if contig else 1,
    }


def _check_budget(path: Path, keyframe: tifffile.TiffPage, decoded: int) -> None:
    """Refuse a strip or tile that would decode to more than :data:`DECODE_BUDGET`.

    This is checked from the header alone, before anything is decoded: a 1.5 MB file can
    hold one deflate strip that inflates to gigabytes.
    """
    if decoded <= DECODE_BUDGET:
        return
    what = "tile" if keyframe.is_tiled else "strip"
    name = getattr(keyframe.compression, "name", str(keyframe.compression))
    raise FormatError(
        f"{path}: one {what} of this TIFF ({name} compressed, {tuple(keyframe.chunks)} "
        f"{np.dtype(keyframe.dtype).name}) decodes to {decoded / 2**20:.0f} MiB, more than the "
        f"{DECODE_BUDGET // 2**20} MiB cubepipe decodes at once; re-save it with smaller "
        "strips or tiles, e.g. `tiffcp -s -r 64 IN OUT`, `tiffcp -t -w 512 -l 512 IN OUT` or "
        "tifffile.imwrite(OUT, data, tile=(512, 512), compression='zlib')"
    )


def _aligned_chunks(
    info: dict[str, Any], nbands: int, ny: int, nx: int, want: Mapping[str, int]
) -> dict[str, int]:
    """Block sizes that hold whole strips/tiles, so each is decoded once per read pass.

    tifffile decodes every strip or tile a block overlaps, whole; blocks that cut one
    (a 512 x 512 block of a page stored as one strip) would decode it again for each.
    So reads span whole strips (the full width) or whole tiles, as close to the chunk
    sizes ``want`` as that allows and at most about :data:`MAX_CHUNK_BYTES` of float32;
    :func:`open_tiff` then rechunks them to ``want``.
    """
    itemsize = max(info["dtype"].itemsize, 4)
    sy, sx = info["extent"]
    g = info["granule"]

    def multiple(size: int, step: int, n: int) -> int:
        return min(n, max(1, round(size / step)) * step)

    cx = multiple(want["x"], sx, nx)
    cb = multiple(want["band"], g, nbands)
    unit = sy * cx * itemsize  # one band of one row of strips/tiles
    if cb * unit > MAX_CHUNK_BYTES:  # bands whole would be too much: cut at pages/planes
        cb = min(cb, max(g, (MAX_CHUNK_BYTES // unit) // g * g))
    rows = max(1, min(round(want["y"] / sy) or 1, MAX_CHUNK_BYTES // max(1, cb * unit)))
    return {"band": cb, "y": min(ny, rows * sy), "x": cx}


def _overlaps(src: tuple[int, ...], dst: tuple[int, ...]) -> list[list[tuple[int, int, int]]]:
    """Per block of ``dst`` (chunk sizes along one axis): the blocks of ``src`` it
    overlaps, as ``(src block, start, stop)`` with start/stop relative to that block."""
    bounds = np.cumsum((0, *src))
    out, start = [], 0
    for size in dst:
        stop, parts = start + size, []
        i = int(np.searchsorted(bounds, start, side="right")) - 1
        while i < len(src) and bounds[i] < stop:
            parts.append(
                (i, max(start, bounds[i]) - bounds[i], min(stop, bounds[i + 1]) - bounds[i])
            )
            i += 1
        out.append(parts)
        start = stop
    return out


def _assemble(
    plan: np.ndarray, shape: tuple[int, ...], dtype: str, *parts: np.ndarray
) -> np.ndarray:
    """One block cut from the read blocks ``parts``: row ``r`` of ``plan`` holds the
    destination box then the source box (start, stop per axis) of ``parts[r]``."""
    out = np.empty(shape, dtype=np.dtype(dtype))
    n = len(shape)
    for row, part in zip(plan, parts, strict=True):
        dst = tuple(slice(row[2 * a], row[2 * a + 1]) for a in range(n))
        src = tuple(slice(row[2 * (n + a)], row[2 * (n + a) + 1]) for a in range(n))
        out[dst] = part[src]
    return out


def _recut(data: da.Array, chunks: tuple[int, ...]) -> da.Array:
    """``data`` (blocks of whole strips/tiles) cut into blocks of ``chunks``, in one graph
    layer named like the read: each read block is computed once per pass and shared by the
    blocks cut from it (``rechunk`` would do the same, under other task names)."""
    out_chunks = da.core.normalize_chunks(chunks, data.shape)
    per_axis = [_overlaps(s, d) for s, d in zip(data.chunks, out_chunks, strict=True)]
    name = "cubepipe-ingest-read-tiff-blocks-" + tokenize(data.name, out_chunks)
    layer: dict[Key, Any] = {}
    for index in itertools.product(*(range(len(c)) for c in out_chunks)):
        shape = tuple(out_chunks[a][i] for a, i in enumerate(index))
        rows, keys = [], []
        for combo in itertools.product(*(per_axis[a][i] for a, i in enumerate(index))):
            dst, src, at = [], [], []
            for a, (block, start, stop) in enumerate(combo):
                offset = sum(data.chunks[a][:block]) + start - sum(out_chunks[a][: index[a]])
                dst += [offset, offset + stop - start]
                src += [start, stop]
                at.append(block)
            rows.append(dst + src)
            keys.append((data.name, *at))
        plan = np.array(rows, dtype=np.int64)  # an array: never mistaken for a task key
        layer[(name, *index)] = (_assemble, plan, shape, data.dtype.str, *keys)
    # dask's own DaskCollection protocol declares __dask_scheduler__ a staticmethod, which
    # da.Array's (a staticmethod object) does not match for mypy: a wrong stub, not a bug.
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[data])  # type: ignore[list-item]
    return da.Array(graph, name, out_chunks, meta=data._meta)


def _contiguous_pages(path: Path, series: tifffile.TiffPageSeries) -> tuple[int, ...] | None:
    """Offsets of the pages when each is stored raw and in one piece (memory-mappable)."""
    key = series.keyframe
    if key.predictor != 1 or key.fillorder != 1:
        return None
    pages = [page for page in series.pages if page is not None]  # _check_series refused a None
    if not all(page.is_contiguous for page in pages):
        return None
    offsets = tuple(int(page.dataoffsets[0]) for page in pages)
    if max(offsets) + key.nbytes > path.stat().st_size:
        raise FormatError(f"{path}: truncated TIFF: image data run past the end of the file")
    return offsets


def _band_axes(axes: str, shape: tuple[int, ...]) -> tuple[list[int], int]:
    """Positions of the axes that flatten into ``band``, and the band count."""
    others = [i for i, a in enumerate(axes) if a not in "YX"]
    return others, math.prod(shape[i] for i in others)


def _window(arr: Any, axes: str, bands: tuple[int, int], y: slice, x: slice) -> np.ndarray:
    """Bands ``bands`` (the non-Y/X axes of ``arr`` flattened) of the ``y``/``x`` window."""
    others, _ = _band_axes(axes, arr.shape)
    inner = math.prod(arr.shape[i] for i in others[1:])
    lead0, lead1 = bands[0] // inner, -(-bands[1] // inner)
    selection: list[slice] = [slice(None)] * arr.ndim
    selection[axes.index("Y")], selection[axes.index("X")] = y, x
    if others:
        selection[others[0]] = slice(lead0, lead1)
    part = np.asarray(arr[tuple(selection)])
    part = np.transpose(part, [*others, axes.index("Y"), axes.index("X")])
    part = part.reshape(-1, y.stop - y.start, x.stop - x.start)
    start = bands[0] - lead0 * inner
    return part[start : start + bands[1] - bands[0]]


def _read_tiff(
    path: str,
    axes: str,
    page_shape: tuple[int, ...],
    page_axes: str,
    page_offsets: tuple[int, ...] | None,
    file_dtype: str,
    dtype: str,
    block_info: Any = None,
) -> np.ndarray:
    """One ``(band, y, x)`` block: only the pages/strips/tiles it overlaps are read.

    Raw contiguous pages are memory-mapped (only the window is touched); other data go
    through tifffile's zarr store, which decodes the strips/tiles the window overlaps.
    """
    (b0, b1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    y, x = slice(y0, y1), slice(x0, x1)
    try:
        with _tifffile_log():
            if page_offsets is not None:
                per_page = _band_axes(page_axes, page_shape)[1]
                p0, p1 = b0 // per_page, -(-b1 // per_page)
                parts = [
                    _window(
                        np.memmap(path, dtype=file_dtype, mode="r", offset=off, shape=page_shape),
                        page_axes,
                        (0, per_page),
                        y,
                        x,
                    )
                    for off in page_offsets[p0:p1]
                ]
                start = b0 - p0 * per_page
                part = np.concatenate(parts)[start : start + b1 - b0]
            else:
                with tifffile.TiffFile(path) as tif:
                    store = tif.series[0].aszarr(level=0)
                    try:
                        part = _window(zarr.open_array(store, mode="r"), axes, (b0, b1), y, x)
                    finally:
                        store.close()
        return np.array(part, dtype=np.dtype(dtype), order="C")
    except Exception as exc:
        raise FormatError(f"{path}: reading a block of the TIFF file failed ({exc})") from exc


def open_tiff(
    path: str | Path, *, chunks: Mapping[str, int] | None = None, georef: bool = True
) -> xr.Dataset:
    """Open a TIFF or BigTIFF file lazily as a cube Dataset.

    Parameters
    ----------
    path
        A TIFF/BigTIFF file: multi-page and/or multi-sample, strips or tiles,
        uncompressed or compressed (LZW, JPEG... need the ``imagecodecs`` package).
    chunks
        ``{dim: size}`` chunk sizes; missing dims use the store defaults.
    georef
        Read a GeoTIFF's CRS and transform (with rasterio, the ``geo`` extra) into
        ``spatial_ref`` and ``y``/``x`` coordinates (see :mod:`~cubepipe.storage.geo`);
        False skips them. Plain TIFFs never need rasterio.

    Returns
    -------
    xarray.Dataset
        Variable ``cube`` with dims ``(band, y, x)`` in the file's dtype (native byte
        order), backed by dask; coordinate ``band_name`` (``R``, ``G``, ``B``, ``A``) for
        RGB(A) images; attr ``nodata`` from a GDAL_NODATA tag; the georeferencing.

    Raises
    ------
    FormatError
        Not a TIFF file, truncated or damaged; a GeoTIFF with no or an unknown
        coordinate system. MissingDependencyError: the compression needs
        ``imagecodecs``, or the GeoTIFF keys need ``rasterio``.
    """
    p = Path(path)
    info = _inspect(p)
    if info["n_series"] > 1:
        warnings.warn(
            f"{p}: the TIFF holds {info['n_series']} image series; only the first "
            f"{info['shape']} ({info['axes']}) is read",
            CubepipeWarning,
            stacklevel=2,
        )
    shape, axes = info["shape"], info["axes"]
    if "Y" not in axes or "X" not in axes:
        raise FormatError(f"{p}: TIFF image axes {axes!r} lack Y and X; expected an image")
    _, nbands = _band_axes(axes, shape)
    ny, nx = shape[axes.index("Y")], shape[axes.index("X")]
    read_chunks, want = chunks, None
    if info["page_offsets"] is None:  # decoded by strip/tile: reads take whole ones
        want = default_chunks(
            {"band": nbands, "y": ny, "x": nx}, max(info["dtype"].itemsize, 4), overrides=chunks
        )
        read_chunks = _aligned_chunks(info, nbands, ny, nx, want)
    data = block_array(
        _read_tiff,
        str(p),
        axes,
        info["page_shape"],
        info["page_axes"],
        info["page_offsets"],
        info["file_dtype"].str,
        info["dtype"].str,
        shape=(nbands, ny, nx),
        dtype=info["dtype"],
        dims=("band", "y", "x"),
        chunks=read_chunks,
        token="cubepipe-ingest-read-tiff",
    )
    if want is not None and read_chunks != want:
        data = _recut(data, (want["band"], want["y"], want["x"]))
    attrs: dict[str, Any] = {"source_axes": axes}
    if info["nodata"] is not None:
        with contextlib.suppress(ValueError):
            attrs["nodata"] = float(str(info["nodata"]).strip().strip("\x00"))
    ds = xr.Dataset(
        {"cube": (("band", "y", "x"), data, attrs)}, attrs={"source": str(p), "format": "tiff"}
    )
    if info["rgb"] and axes.replace("Y", "").replace("X", "") == "S" and nbands in (3, 4):
        # object strings are zarr v3's "string" type (fixed-width numpy strings are not)
        names = np.array(["R", "G", "B", "A"][:nbands], dtype=object)
        ds = ds.assign_coords(band_name=("band", names))
    if info["geo"] and georef:
        ds = assign_georef(ds, read_georef(p, what="GeoTIFF georeferencing"))
    return ds


register(
    ReaderSpec(
        name="tiff",
        suffixes=(".tif", ".tiff"),
        sniff=_sniff,
        open=open_tiff,
        aliases=("tif",),
        options=("georef",),
    )
)
