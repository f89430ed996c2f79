"""PNG and JPEG files from integer codes (see :mod:`.scaling`), through Pillow.

One image at a time is held in memory: ``(y, x)`` grey or ``(y, x, 3)`` RGB codes.
PNG is lossless (8-bit ``L``/``RGB``, 16-bit grey ``I;16``). JPEG is 8-bit and lossy: it is
written at quality 95 without chroma subsampling, then read back so the error it added
can be measured and recorded honestly.

Pillow encodes into memory and the bytes are written here with an ordinary ``write``:
Pillow's own file output (JPEG through the file descriptor) ignores a short ``write(2)``,
so on a disk that fills up it can leave a truncated file and report success.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["JPEG_QUALITY", "PNG_COMPRESS_LEVEL", "jpeg_deviation", "write_image"]

JPEG_QUALITY = 95
#: zlib level 3: about 4x faster than 6 on noisy scientific images, ~10% larger files.
PNG_COMPRESS_LEVEL = 3


def write_image(codes: np.ndarray, path: Path, *, fmt: str) -> None:
    """Write ``codes`` (uint8 ``(y, x)``/``(y, x, 3)``, or uint16 ``(y, x)``) as ``fmt``
    (``"png"`` or ``"jpeg"``) to ``path``."""
    codes = np.ascontiguousarray(codes)
    if codes.dtype == np.uint16:
        img = Image.fromarray(codes.astype("<u2"))  # mode I;16
    else:
        img = Image.fromarray(codes)
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    data = buf.getbuffer()
    with open(path, "xb") as fh:  # writes all of it or raises (ENOSPC, ...)
        fh.write(data)
        written = fh.tell()
    if written != data.nbytes:  # pragma: no cover (a buffered write never stops short)
        raise OSError(f"wrote {written} of {data.nbytes} bytes of {path}")


def jpeg_deviation(path: Path, codes: np.ndarray, *, nan_value: int) -> tuple[int, int]:
    """``(max |read - written| over valid codes, n pixels whose NaN-ness changed)`` of the
    JPEG at ``path`` against the ``codes`` written."""
    with Image.open(path) as img:
        back = np.asarray(img).astype(np.int32)
    want = codes.astype(np.int32)
    valid = want != nan_value
    dev = int(np.abs(back - want)[valid].max(initial=0))
    mismatches = int(np.count_nonzero(valid != (back != nan_value)))
    return dev, mismatches
