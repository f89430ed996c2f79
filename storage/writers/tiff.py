"""Float TIFF: one page per band (per leading index, then band), written in one pass.

The file is laid out by :func:`tifffile.imwrite` without data (uncompressed, native byte
order, strips of about 1 MiB, pages contiguous: what :func:`tifffile.memmap` makes) and
every chunk of the cube is converted and written into its place by
:func:`~._stream.stream_into` (``pwrite``, no memory map), so the cube is read once and
never held in memory. Files above :data:`BIGTIFF_BYTES` are BigTIFF. tifffile's JSON description records
the full shape (e.g. ``(frame, band, y, x)``) and ``metadata`` (source, variable, bands). tifffile, Pillow (mode ``F``,
float32 pages) and OpenCV (``cv2.imread``/``cv2.imreadmulti`` with
``cv2.IMREAD_UNCHANGED``) read the result bit for bit.

``separate=True`` lays the bands out as the samples of one page instead (planar
configuration 2, one page per leading index): GDAL/rasterio read that as one raster of
that many bands (they see only the first page of a multi-page file), so georeferenced
exports use it. The pixels lie in the file in the same order either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile

from ._stream import Converter, FileTarget, stream_into

__all__ = ["BIGTIFF_BYTES", "write_tiff"]

#: Classic TIFF offsets are 32-bit: leave 32 MiB of headroom for tags and strip tables.
BIGTIFF_BYTES = 2**32 - 2**25
_STRIP_BYTES = 2**20


def write_tiff(
    data: da.Array,
    path: Path,
    *,
    dtype: np.dtype,
    convert: Converter,
    k: int,
    metadata: dict[str, Any] | None = None,
    separate: bool = False,
) -> np.ndarray:
    """Write ``convert(data)`` (``(..., band, y, x)``) to a new TIFF at ``path``: a page
    per band, or with ``separate`` the bands as planar samples of one page.

    Returns the converter's statistics (see :func:`~._stream.stream_into`).
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in data.shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    rows = max(1, min(shape[-2], _STRIP_BYTES // max(1, shape[-1] * dtype.itemsize)))
    if shape[-1] == 1:
        # tifffile's "shaped" layout drops trailing length-1 dims (x == 1 would become the
        # page width of y); without it the pages keep their (y, x) geometry for all readers.
        metadata = None
    located = tifffile.imwrite(
        str(path),
        data=None,
        shape=shape,
        dtype=dtype,
        photometric="minisblack",
        planarconfig="separate" if separate and shape[-3] > 1 else None,
        rowsperstrip=rows,
        bigtiff=nbytes > BIGTIFF_BYTES,
        metadata=metadata,
        align=tifffile.TIFF.ALLOCATIONGRANULARITY,  # as tifffile.memmap lays it out
        returnoffset=True,
    )
    if located is None:  # cannot happen for uncompressed contiguous pages
        raise ValueError(f"tifffile did not lay out {path} as one contiguous block")
    target = FileTarget(str(path), int(located[0]), dtype.str, shape)
    return stream_into(data, target, convert, k=k, token="cubepipe-export-tiff")
