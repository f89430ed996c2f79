"""ENVI reader: a text ``.hdr`` beside a raw binary file, opened lazily block by block.

The header is parsed here (no ``spectral`` dependency): keys are case-insensitive,
``{...}`` values may span lines, ``;`` comments and vendor fields are tolerated. Each dask
block maps the binary with :class:`numpy.memmap` and copies out only its own
``(band, y, x)`` box, so memory does not grow with the file. Data keep the file's dtype
(byte-swapped to the machine's byte order, values unchanged) whatever the interleave.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from ..errors import CubepipeWarning, FormatError
from ..geo import assign_georef, read_georef
from ..layout import default_chunks
from .base import ReaderSpec, register

__all__ = ["find_pair", "nm_factor", "open_envi", "parse_header", "read_header"]

#: Largest header read: headers are text, a few KiB even with thousands of wavelengths.
MAX_HEADER_BYTES = 16 * 2**20
#: ENVI ``data type`` codes that map onto real NumPy dtypes (little-endian spelling).
DATA_TYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}
#: Suffixes of the binary file tried next to a header, in order ("" = no suffix).
BINARY_SUFFIXES = ("", ".img", ".dat", ".raw", ".bsq", ".bil", ".bip", ".bin")
#: File order of the three axes for each interleave, and the transpose to (band, y, x).
_FILE_AXES = {"bsq": ("band", "y", "x"), "bil": ("y", "band", "x"), "bip": ("y", "x", "band")}
_TO_BYX = {"bsq": (0, 1, 2), "bil": (1, 0, 2), "bip": (2, 0, 1)}
#: Length units of ``wavelength units`` (lower case, no plural "s", "metre" as "meter")
#: and their factor to nanometres.
_TO_NM = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3}
_TO_NM |= {"micrometer": 1e3, "mm": 1e6, "millimeter": 1e6}


def nm_factor(unit: str) -> float | None:
    """The factor from a length ``unit`` (``nm``, ``micrometers``, ``µm``...) to
    nanometres; None for anything else (``unknown``, ``index``, wavenumbers)."""
    return _TO_NM.get(unit.strip().lower().removesuffix("s").replace("metre", "meter"))


def parse_header(text: str, *, source: str | Path = "<header>") -> dict[str, str]:
    """Parse the text of an ENVI header into ``{lower-case key: raw value}``.

    Parameters
    ----------
    text
        The whole header; its first non-blank line must be ``ENVI``.
    source
        Named in error messages.

    Returns
    -------
    dict of str to str
        Keys lower-cased with inner whitespace collapsed (``"Byte  Order"`` ->
        ``"byte order"``); ``{...}`` values are returned without their braces, joined
        into one line. Comment lines (``;``) and lines without ``=`` are skipped.
    """
    lines = text.lstrip("\ufeff \t\r\n").splitlines()
    first = lines[0].strip() if lines else ""
    if not first.upper().startswith("ENVI"):
        raise FormatError(
            f"{source}: not an ENVI header: expected the first line 'ENVI', got {first[:40]!r}; "
            "pass the .hdr file written together with the binary data"
        )
    fields: dict[str, str] = {}
    rows = iter(lines[1:])
    for line in rows:
        key, eq, value = line.strip().partition("=")
        if not eq or key.startswith(";"):
            continue
        key, value = " ".join(key.lower().split()), value.strip()
        if value.startswith("{"):
            parts = [value[1:]]
            while "}" not in parts[-1]:
                more = next(rows, None)
                if more is None:
                    raise FormatError(
                        f"{source}: the value of {key!r} opens '{{' but never closes it; "
                        "fix the header (every '{' needs a '}')"
                    )
                parts.append(more.strip())
            value = " ".join(parts)
            value = value[: value.index("}")].strip()
        fields[key] = value
    return fields


def read_header(path: str | Path) -> dict[str, str]:
    """Read and parse the ENVI header file ``path`` (see :func:`parse_header`)."""
    p = Path(path)
    size = p.stat().st_size
    if size > MAX_HEADER_BYTES:
        raise FormatError(
            f"{p}: {size} bytes is far more than an ENVI header holds (at most "
            f"{MAX_HEADER_BYTES // 2**20} MiB read); pass the small text .hdr file written "
            "with the data"
        )
    return parse_header(p.read_text(encoding="utf-8", errors="replace"), source=p)


def find_pair(path: str | Path) -> tuple[Path, Path]:
    """The ``(header, binary)`` pair for either file of an ENVI data set.

    A ``.hdr`` looks for its binary with the suffixes of :data:`BINARY_SUFFIXES` (which
    also finds ``name.ext`` for ``name.ext.hdr``); a binary looks for ``name.hdr`` or
    ``name.ext.hdr``. Raises :class:`FormatError` when the partner is missing.
    """
    p = Path(path)
    if p.suffix.lower() == ".hdr":
        tries = [p.with_suffix(s) for s in BINARY_SUFFIXES]
        tries += [p.with_suffix(s.upper()) for s in BINARY_SUFFIXES if s]
        what = "binary data file"
    else:
        tries = [p.with_suffix(".hdr"), p.with_suffix(".HDR")]
        tries += [p.with_name(p.name + ".hdr"), p.with_name(p.name + ".HDR")]
        what = "ENVI header"
    for cand in tries:
        if cand != p and cand.is_file():
            return (p, cand) if p.suffix.lower() == ".hdr" else (cand, p)
    names = ", ".join(sorted({c.name for c in tries if c != p}))
    raise FormatError(
        f"{p}: no {what} found beside it (looked for {names}); "
        f"put the {what} next to it with the same name"
    )


def _int(fields: Mapping[str, str], key: str, hdr: Path, default: int | None = None) -> int:
    raw = fields.get(key)
    if raw is None and default is not None:
        return default
    try:
        return int(str(raw).strip())
    except ValueError:
        got = "nothing" if raw is None else repr(raw)
        raise FormatError(
            f"{hdr}: expected an integer for {key!r} in the header, got {got}; fix the header"
        ) from None


def _dtype(fields: Mapping[str, str], hdr: Path) -> np.dtype:
    code = _int(fields, "data type", hdr)
    if code not in DATA_TYPES:
        kind = "complex data" if code in (6, 9) else "an unsupported data type"
        known = ", ".join(f"{k} ({np.dtype(v).name})" for k, v in DATA_TYPES.items())
        raise FormatError(
            f"{hdr}: 'data type = {code}' is {kind}; cubepipe reads real ENVI types only "
            f"({known}); convert the file, e.g. to its magnitude, first"
        )
    order = _int(fields, "byte order", hdr, default=0)
    if order not in (0, 1):
        raise FormatError(f"{hdr}: expected 'byte order' 0 or 1, got {order}; fix the header")
    return np.dtype(("<" if order == 0 else ">") + DATA_TYPES[code])


def _numbers(fields: Mapping[str, str], key: str, n: int, hdr: Path) -> np.ndarray | None:
    raw = fields.get(key)
    if not raw:
        return None
    try:
        values = np.array([float(v) for v in raw.split(",") if v.strip()], dtype=np.float64)
    except ValueError:
        values = np.empty(0)
    if values.size != n:
        _ignore(hdr, key, f"expected {n} numbers (one per band), got {raw[:60]!r}...")
        return None
    return values


def _ignore(hdr: Path, key: str, why: str) -> None:
    warnings.warn(f"{hdr}: ignoring {key!r}: {why}", CubepipeWarning, stacklevel=4)


def _band_coords(fields: Mapping[str, str], bands: int, hdr: Path) -> dict[str, tuple]:
    coords: dict[str, tuple] = {}
    unit = fields.get("wavelength units", "").strip()
    factor = nm_factor(unit)
    attrs = {} if not unit or unit.lower() == "unknown" else {"units": unit}
    if factor is not None:
        attrs = {"units": "nm"} | ({"converted_from": unit} if factor != 1.0 else {})
    for key in ("wavelength", "fwhm"):
        values = _numbers(fields, key, bands, hdr)
        if values is not None:
            coords[key] = ("band", values * (factor or 1.0), dict(attrs))
    names = [v.strip() for v in fields.get("band names", "").split(",")]
    if len(names) == bands and any(names):
        coords["band_name"] = ("band", np.array(names, dtype=object))
    elif any(names):
        _ignore(hdr, "band names", f"{len(names)} names for {bands} bands")
    return coords


def _nodata(fields: Mapping[str, str], dtype: np.dtype, hdr: Path) -> int | float | None:
    raw = fields.get("data ignore value")
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise FormatError(
            f"{hdr}: expected a number for 'data ignore value', got {raw!r}; fix the header"
        ) from None
    return int(value) if dtype.kind in "iu" and value.is_integer() else value


def _read_block(
    *,
    path: str,
    offset: int,
    file_dtype: str,
    interleave: str,
    file_shape: tuple[int, int, int],
    block_info: dict | None = None,
) -> np.ndarray:
    """Read one ``(band, y, x)`` box of the binary file (a dask block)."""
    assert block_info is not None  # dask passes it to every block
    (b0, b1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    box = {"band": slice(b0, b1), "y": slice(y0, y1), "x": slice(x0, x1)}
    dtype = np.dtype(file_dtype)
    mm = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=file_shape)
    part = mm[tuple(box[a] for a in _FILE_AXES[interleave])].transpose(_TO_BYX[interleave])
    out = np.array(part, dtype=dtype.newbyteorder("="), order="C")
    del part, mm  # unmap now, not at garbage collection
    return out


#: ``map info`` projection names that place pixels on no map (lab and pushbroom scans).
_NO_MAP = ("arbitrary", "pixel")


def _georeferenced(fields: Mapping[str, str]) -> bool:
    """Does the header place the image on the Earth? Its ``map info`` does, unless its
    projection is a pixel grid (a ``coordinate system string`` alone places nothing)."""
    projection = fields.get("map info", "").split(",")[0].strip().lower()
    return bool(projection) and not projection.startswith(_NO_MAP)


def open_envi(
    path: str | Path, *, chunks: Mapping[str, int] | None = None, georef: bool = True
) -> xr.Dataset:
    """Open an ENVI data set lazily as a cube Dataset.

    Parameters
    ----------
    path
        The ``.hdr`` header or the binary file; the partner is found by :func:`find_pair`.
    chunks
        Chunk size per dim; dims not given follow :func:`~cubepipe.storage.layout.default_chunks`.
    georef
        Read ``map info`` and ``coordinate system string`` (with GDAL's ENVI driver through
        rasterio, the ``geo`` extra) into ``spatial_ref`` and ``y``/``x`` coordinates
        (:mod:`~cubepipe.storage.geo`); False skips them. ``map info`` of an
        ``Arbitrary`` (pixel) projection is no georeferencing and needs no rasterio.

    Returns
    -------
    xarray.Dataset
        ``cube`` with dims ``(band, y, x)`` (``bands, lines, samples``) in the file's dtype
        (native byte order), backed by dask; coordinates ``wavelength`` (nm when the
        header's ``wavelength units`` is a length; micrometres are converted and
        ``converted_from`` recorded), ``fwhm`` and ``band_name`` when present;
        ``cube.attrs["nodata"]`` from ``data ignore value``; the georeferencing.

    Raises
    ------
    FormatError
        For a missing partner file, a malformed header, complex or compressed data, or a
        binary whose size disagrees with the header (both sizes are named).

    Notes
    -----
    Missing ``byte order`` means little-endian, missing ``header offset`` means 0 and
    missing ``interleave`` means BSQ (as GDAL reads them). The expected binary size is
    ``offset + samples * lines * bands * itemsize`` bytes, exactly.
    """
    hdr, data = find_pair(path)
    fields = read_header(hdr)
    samples, lines, bands = (_int(fields, k, hdr) for k in ("samples", "lines", "bands"))
    offset = _int(fields, "header offset", hdr, default=0)
    dtype = _dtype(fields, hdr)
    interleave = fields.get("interleave", "bsq").strip().lower()
    if interleave not in _FILE_AXES:
        raise FormatError(
            f"{hdr}: expected 'interleave' bsq, bil or bip, got {interleave!r}; fix the header"
        )
    if _int(fields, "file compression", hdr, default=0) != 0:
        raise FormatError(
            f"{hdr}: the binary is compressed ('file compression = 1'); "
            "decompress it (gunzip) and set 'file compression = 0'"
        )
    if min(samples, lines, bands) < 1 or offset < 0:
        raise FormatError(
            f"{hdr}: expected samples, lines, bands >= 1 and header offset >= 0, got "
            f"{samples}, {lines}, {bands} and {offset}; fix the header"
        )
    expected = offset + samples * lines * bands * dtype.itemsize
    st = data.stat()
    actual = st.st_size
    if actual != expected:
        raise FormatError(
            f"{data}: the header {hdr.name} describes {expected} bytes ({offset} header offset"
            f" + {lines} lines x {samples} samples x {bands} bands x {dtype.itemsize} bytes of "
            f"{dtype.name}) but the file has {actual} bytes; check that the header belongs "
            "to this file and that samples, lines, bands, data type and header offset are right"
        )
    sizes = {"band": bands, "y": lines, "x": samples}
    file_shape = tuple(sizes[a] for a in _FILE_AXES[interleave])
    want = default_chunks(sizes, dtype.itemsize, overrides=dict(chunks or {}))
    out_dtype = dtype.newbyteorder("=")
    name = "cubepipe-ingest-read-envi-" + tokenize(
        str(data.resolve()), st.st_mtime_ns, actual, offset, dtype.str, interleave, want
    )
    array = da.map_blocks(
        _read_block,
        name=name,
        chunks=da.core.normalize_chunks(tuple(want[d] for d in sizes), tuple(sizes.values())),
        dtype=out_dtype,
        meta=np.empty((0, 0, 0), dtype=out_dtype),
        path=str(data),
        offset=offset,
        file_dtype=dtype.str,
        interleave=interleave,
        file_shape=file_shape,
    )
    nodata = _nodata(fields, dtype, hdr)
    cube = xr.Variable(("band", "y", "x"), array, {} if nodata is None else {"nodata": nodata})
    attrs = {"source": str(path), "format": "envi"}
    if fields.get("description"):
        attrs["description"] = fields["description"]
    ds = xr.Dataset({"cube": cube}, coords=_band_coords(fields, bands, hdr), attrs=attrs)
    if georef and _georeferenced(fields):
        ds = assign_georef(ds, read_georef(data, what="ENVI map info", source=hdr))
    return ds


def _sniff(head: bytes, path: Path) -> bool:
    """An ENVI header (starts with ``ENVI``) or a binary with an ENVI header beside it."""
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"ENVI"):
        return True
    if path.suffix.lower() not in BINARY_SUFFIXES:
        return False
    try:
        hdr, _ = find_pair(path)
        with hdr.open("rb") as fh:
            return fh.read(16).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"ENVI")
    except (FormatError, OSError):
        return False


SPEC = register(
    ReaderSpec(name="envi", suffixes=(".hdr",), sniff=_sniff, open=open_envi, options=("georef",))
)
