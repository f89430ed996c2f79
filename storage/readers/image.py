"""PNG and JPEG reader (Pillow).

PNG and JPEG cannot be decoded partially, so one image is one dask block whatever
``chunks`` says (the store is rechunked as it is written); these formats hold photos and
exports, which are small next to the cubes cubepipe streams.

Bands: grey images have one band (``band_name`` ``grey``), grey+alpha two (``grey``,
``A``), RGB three (``R``, ``G``, ``B``), RGBA four, CMYK JPEGs four (``C``, ``M``, ``Y``,
``K``). Palette images are expanded to RGB (RGBA if they carry transparency), bilevel
images read as 0/1. 8-bit images are ``uint8``, 16-bit PNGs ``uint16`` (16-bit colour
PNGs need the ``imagecodecs`` package, since Pillow would drop their low byte).

Forced channels (``color=``, CLI ``--color``): ``"rgb"`` gives every image three bands
``R, G, B``: grey is replicated into the three (what Pillow's ``convert("RGB")`` does for
8-bit grey; 16-bit grey stays 16-bit and bilevel stays 0/1), colour images go through
Pillow's ``convert("RGB")`` (CMYK by Pillow's formula). ``"grey"`` gives one band
``grey``: colour is converted by ITU-R 601-2 luma exactly as Pillow's ``convert("L")``,
``L = (19595 R + 38470 G + 7471 B + 32768) >> 16`` (i.e. ``0.299 R + 0.587 G + 0.114 B``
rounded), on the image's RGB values (16-bit colour: the same formula in 16 bits). Alpha
is dropped in both, never composited: a transparent pixel keeps its colour.

Directories, globs and lists of images: :mod:`.collection`.
"""

from __future__ import annotations

import importlib.util
import struct
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from PIL import Image

from ..errors import FormatError, InputError, MissingDependencyError
from .base import ReaderSpec, detect_format, register
from .npy import block_array

__all__ = ["COLORS", "open_colored", "open_image"]

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
#: Pillow mode -> (mode to convert to or None, band names).
_MODES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "1": (None, ("grey",)),
    "L": (None, ("grey",)),
    "LA": (None, ("grey", "A")),
    "P": ("RGB", ("R", "G", "B")),
    "PA": ("RGBA", ("R", "G", "B", "A")),
    "RGB": (None, ("R", "G", "B")),
    "RGBX": ("RGB", ("R", "G", "B")),
    "RGBA": (None, ("R", "G", "B", "A")),
    "CMYK": (None, ("C", "M", "Y", "K")),
    "YCbCr": ("RGB", ("R", "G", "B")),
    "I;16": (None, ("grey",)),
    "I;16L": (None, ("grey",)),
    "I;16B": (None, ("grey",)),
    "I": ("I;16", ("grey",)),  # 16-bit grey PNGs in older Pillow versions
}
#: Pillow format names each reader accepts (phone cameras write JPEGs as MPO).
_PIL_FORMATS = {"png": ["PNG"], "jpeg": ["JPEG", "MPO"]}
_COLOUR16 = {2: ("R", "G", "B"), 4: ("grey", "A"), 6: ("R", "G", "B", "A")}
#: ``color=`` values (see the module docstring).
COLORS = ("rgb", "grey")
_RGB, _GREY = ("R", "G", "B"), ("grey",)


def _png_ihdr(path: Path) -> tuple[int, int]:
    """``(bit depth, colour type)`` from a PNG's IHDR chunk."""
    with path.open("rb") as fh:
        head = fh.read(26)
    return head[24], head[25]


#: PNG colour type -> samples per pixel.
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: Adam7 passes: (x0, y0, dx, dy).
_ADAM7: tuple[tuple[int, int, int, int], ...] = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def _png_raw_size(path: Path) -> int:
    """Bytes the IDAT stream of a PNG must inflate to (filter bytes included)."""
    with path.open("rb") as fh:
        head = fh.read(29)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    bits = _PNG_SAMPLES.get(colour, 1) * depth
    passes = _ADAM7 if interlace == 1 else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            total += h * (1 + -(-(w * bits) // 8))
    return total


def _check_png_data(path: Path) -> None:
    """Raise FormatError unless the IDAT data inflate to exactly the image's size.

    Pillow fills missing rows with zeros when the compressed stream ends early (a damaged
    or deliberately short file): inflating once, counting bytes in 1 MiB pieces, catches
    that without holding the image.
    """
    expected = _png_raw_size(path)
    inflate = zlib.decompressobj()
    total = 0
    with path.open("rb") as fh:
        fh.seek(8)
        while True:
            head = fh.read(8)
            if len(head) < 8:
                break
            length, tag = struct.unpack(">I4s", head)
            if tag == b"IEND":
                break
            if tag != b"IDAT":
                fh.seek(length + 4, 1)
                continue
            left = length
            while left > 0 and total <= expected:
                piece = fh.read(min(left, 2**20))
                if not piece:
                    break
                left -= len(piece)
                while piece and total <= expected:
                    total += len(inflate.decompress(piece, 2**20))
                    piece = inflate.unconsumed_tail
            fh.seek(left + 4, 1)
    if total != expected:
        raise FormatError(
            f"{path}: damaged PNG: its image data inflate to {'more than ' if total > expected else ''}"
            f"{total} bytes where the header's size needs {expected}; copy or export it again"
        )


def _too_big(path: Path, fmt: str, exc: BaseException) -> FormatError:
    return FormatError(
        f"{path}: the {fmt.upper()} header declares more pixels than Pillow's "
        f"decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels): {exc}; a PNG/JPEG is "
        "decoded whole, so convert an image this large to a tiled TIFF (e.g. `vips tiffsave "
        "IN OUT.tif --tile` or `gdal_translate -co TILED=YES IN OUT.tif`)"
    )


def _check_jpeg_end(path: Path) -> None:
    """Raise FormatError for a JPEG cut short (a download or copy that stopped).

    A whole JPEG ends with the EOI marker ``FF D9``, possibly followed by a trailer some
    cameras append; only a file without EOI in its last 4 KiB is decoded here (once) to
    tell a cut file from a long trailer, so a damaged file in a data set stops the ingest
    before anything is written.
    """
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 4096))
        if b"\xff\xd9" in fh.read():
            return
    try:
        with Image.open(path, formats=_PIL_FORMATS["jpeg"]) as im:
            im.load()
    except Exception as exc:
        raise FormatError(
            f"{path}: truncated or damaged JPEG (no end-of-image marker; {exc}); copy or "
            "export it again, or leave it out"
        ) from exc


def _inspect(path: Path, fmt: str) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=_PIL_FORMATS[fmt]) as im:
                mode, (nx, ny) = im.mode, im.size
                transparent = "transparency" in im.info
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_big(path, fmt, exc) from None
    except Exception as exc:
        raise FormatError(
            f"{path}: not a readable {fmt.upper()} image ({type(exc).__name__}: {exc}); "
            "the file is damaged or its suffix is wrong (pass --format to choose a reader)"
        ) from exc
    decoder = "pillow"
    if fmt == "jpeg":
        _check_jpeg_end(path)
    if fmt == "png":
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            if b"IEND" not in fh.read():
                raise FormatError(
                    f"{path}: truncated PNG (no IEND chunk at the end of the file); copy or "
                    "export it again"
                )
        depth, colour = _png_ihdr(path)
        if depth == 16 and colour in _COLOUR16:
            if importlib.util.find_spec("imagecodecs") is None:
                raise MissingDependencyError(
                    f"{path}: reading 16-bit colour PNG", "imagecodecs", None
                )
            decoder, mode = "imagecodecs", "16-bit"
            names: tuple[str, ...] = _COLOUR16[colour]
    if decoder == "pillow":
        if mode not in _MODES:
            raise FormatError(
                f"{path}: image mode {mode!r} is not supported; expected grey, grey+alpha, "
                "RGB, RGBA, CMYK or palette images (convert it, e.g. to RGB)"
            )
        convert, names = _MODES[mode]
        if mode == "P" and transparent:
            convert, names = _MODES["PA"]
        mode = convert or mode
    dtype = np.dtype(np.uint16 if mode.startswith("I;16") or decoder != "pillow" else np.uint8)
    return {"decoder": decoder, "mode": mode, "names": names, "shape": (ny, nx), "dtype": dtype}


def _color_plan(info: dict[str, Any], color: str | None) -> dict[str, Any]:
    """``info`` for forced channels: the Pillow ``mode`` to decode to, the NumPy step
    ``post`` after decoding (``""``, ``replicate``, ``first``, ``rgb`` or ``luma``) and
    the band ``names`` (see the module docstring)."""
    info = {**info, "post": ""}
    if color is None:
        return info
    if color not in COLORS:
        raise InputError(f"unknown color {color!r}; expected one of {', '.join(COLORS)}")
    names = info["names"]
    target = _RGB if color == "rgb" else _GREY
    if names == target:
        return info
    if names[0] == "grey":  # grey or grey+alpha: replicate the grey band, or drop alpha
        info["post"] = "replicate" if color == "rgb" else "first"
    elif info["decoder"] == "pillow":  # Pillow converts (alpha dropped, CMYK by formula)
        info["mode"] = "RGB" if color == "rgb" else "L"
    else:  # 16-bit colour PNG (imagecodecs): RGB(A)
        info["post"] = "rgb" if color == "rgb" else "luma"
    info["names"] = target
    return info


def _post(pixels: np.ndarray, post: str) -> np.ndarray:
    """The NumPy step of :func:`_color_plan` on ``(band, y, x)`` pixels."""
    if post == "replicate":
        return np.repeat(pixels[:1], 3, axis=0)
    if post == "first":
        return pixels[:1]
    if post == "rgb":
        return pixels[:3]
    if post == "luma":  # Pillow's ITU-R 601-2 integer luma, in 16 bits
        r, g, b = (pixels[i].astype(np.uint64) for i in range(3))
        return ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16).astype(pixels.dtype)[None]
    return pixels


def _decode(path: str, fmt: str, decoder: str, mode: str) -> np.ndarray:
    if decoder == "imagecodecs":
        import imagecodecs  # noqa: PLC0415 (its presence was checked at open)

        return imagecodecs.png_decode(Path(path).read_bytes())
    with Image.open(path, formats=_PIL_FORMATS[fmt]) as im:
        if mode == "L" and im.mode not in ("L", "RGB"):
            # luma of the image's RGB values (YCbCr, CMYK, palette, alpha: as RGB first)
            return np.asarray(im.convert("RGB").convert("L"))
        return np.asarray(im.convert(mode) if im.mode != mode else im)


def _read_image(
    path: str,
    fmt: str,
    decoder: str,
    mode: str,
    dtype: str,
    post: str = "",
    block_info: Any = None,
) -> np.ndarray:
    """The whole image as one ``(band, y, x)`` block."""
    try:
        if fmt == "png":
            _check_png_data(Path(path))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pixels = _decode(path, fmt, decoder, mode)
    except FormatError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_big(Path(path), fmt, exc) from None
    except Exception as exc:
        raise FormatError(f"{path}: decoding the {fmt.upper()} image failed ({exc})") from exc
    pixels = pixels[np.newaxis] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    return np.ascontiguousarray(_post(pixels, post), dtype=np.dtype(dtype))


def open_image(
    path: str | Path,
    *,
    chunks: Mapping[str, int] | None = None,
    fmt: str | None = None,
    color: str | None = None,
) -> xr.Dataset:
    """Open a PNG or JPEG image lazily as a cube Dataset (one block, decoded on compute).

    Parameters
    ----------
    path
        A PNG (8/16-bit) or JPEG file.
    chunks
        Ignored: an image is always one block (see the module docstring).
    fmt
        ``"png"`` or ``"jpeg"``; default: from the file's first bytes.
    color
        ``"rgb"`` or ``"grey"``: force three bands or one (see the module docstring for
        the conversions); None keeps the file's own channels.

    Returns
    -------
    xarray.Dataset
        Variable ``cube`` ``(band, y, x)`` in ``uint8`` or ``uint16`` with coordinate
        ``band_name`` along ``band``.

    Raises
    ------
    FormatError
        Not a decodable PNG/JPEG, truncated PNG, or an unsupported mode.
    """
    p = Path(path)
    if fmt is None:
        with p.open("rb") as fh:
            fmt = "png" if fh.read(len(_PNG)) == _PNG else "jpeg"
    info = _color_plan(_inspect(p, fmt), color)
    ny, nx = info["shape"]
    nb = len(info["names"])
    data = block_array(
        _read_image,
        str(p),
        fmt,
        info["decoder"],
        info["mode"],
        info["dtype"].str,
        info["post"],
        shape=(nb, ny, nx),
        dtype=info["dtype"],
        dims=("band", "y", "x"),
        chunks={"band": nb, "y": ny, "x": nx},
        token=f"cubepipe-ingest-read-{fmt}",
    )
    return xr.Dataset(
        {"cube": (("band", "y", "x"), data)},
        # object strings are zarr v3's "string" type (fixed-width numpy strings are not)
        coords={"band_name": ("band", np.array(info["names"], dtype=object))},
        attrs={"source": str(p), "format": fmt},
    )


def _open_png(path: str | Path, *, chunks: Mapping[str, int] | None = None) -> xr.Dataset:
    return open_image(path, chunks=chunks, fmt="png")


def _open_jpeg(path: str | Path, *, chunks: Mapping[str, int] | None = None) -> xr.Dataset:
    return open_image(path, chunks=chunks, fmt="jpeg")


def _sniff_png(head: bytes, path: Path) -> bool:
    return head.startswith(_PNG)


def _sniff_jpeg(head: bytes, path: Path) -> bool:
    return head.startswith(_JPEG)


register(ReaderSpec("png", (".png",), _sniff_png, _open_png))
register(ReaderSpec("jpeg", (".jpg", ".jpeg", ".jpe", ".jfif"), _sniff_jpeg, _open_jpeg, ("jpg",)))


def open_colored(path: str | Path, *, color: str, format: str = "auto") -> xr.Dataset:
    """:func:`open_image` with forced channels (``color``: ``"rgb"`` or ``"grey"``);
    :class:`InputError` for a file that is not a PNG or JPEG image."""
    name = detect_format(path).name if format in ("auto", None) else format.lower()
    name = {"jpg": "jpeg"}.get(name, name)
    if name not in _PIL_FORMATS:
        raise InputError(
            f"{path}: --color (color=) applies to PNG and JPEG images; this file is read as "
            f"{name}: leave --color out, or ingest the images without it"
        )
    return open_image(path, fmt=name, color=color)
