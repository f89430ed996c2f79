"""Export: a cube store -> files other tools read (``cubepipe export``).

The writer is chosen by the suffix of the output:

``.tif``/``.tiff``
    Float TIFF, one page per band (per image/frame, then band, for stores with a leading
    dim), bit for bit: negatives, NaN, -0.0, subnormals, +-3.4e38. Streamed: the cube is
    read once, chunk by chunk, and never held in memory. BigTIFF above 4 GiB. Read by
    tifffile, Pillow (mode ``F``) and OpenCV (``IMREAD_UNCHANGED``, ``imreadmulti``).
    A georeferenced store (:mod:`~cubepipe.storage.geo`) exports as a GeoTIFF instead:
    the bands are the samples of one page (per image/frame), as GDAL reads bands, with
    the store's CRS and transform written by GDAL (rasterio, the ``geo`` extra).
``.npy``
    The same values as a NumPy array with the store's dims (``(..., band, y, x)``).
``.png``, ``.jpg``/``.jpeg``
    Unsigned 8-bit (PNG: or 16-bit with ``bits=16``) previews. They cannot hold negative
    or fractional values, so they need an explicit ``scale`` (the range mapped onto the
    integers); each image gets a JSON sidecar (:mod:`~cubepipe.storage.sidecar`) from
    which ``q * scale + offset`` restores floats within its ``max_abs_error``; code 0
    marks NaN. File layout (grey/RGB/per band/per frame): :mod:`.writers.scaled`.

Float dtypes of ``.tif``/``.npy``: :mod:`.writers.floats`. Every file is written under a
temporary name in the output directory and renamed into place only when all files are
complete; existing files are replaced only with ``overwrite=True``.

Filesystem trouble is reported, never crashes or leaves debris: before reading any data
the output directory must be writable and have room for the bytes an export certainly
writes (:func:`check_room`); files are written with ordinary ``pwrite`` calls (no memory
maps, which turn a full disk into SIGBUS), and a full disk, quota, read-only filesystem
or missing permission met while writing is a one-line
:class:`~cubepipe.storage.errors.FileSystemError` after every temporary file is removed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from .errors import FileSystemError, InputError
from .geo import GeoRef, crs_name, georef_of, rasterio_module
from .guard import check_disjoint
from .layout import CORE_DIMS, LEADING_DIMS
from .location import is_remote
from .oserrors import os_error_message, user_os_errors
from .sidecar import sidecar_path
from .store import open_cube
from .writers._staging import check_free
from .writers.floats import export_floats, float_dtype
from .writers.scaled import ImagePlan, export_images, plan_images
from .writers.scaling import ScaleSpec, parse_scale

__all__ = [
    "SUFFIXES",
    "ExportJob",
    "ExportResult",
    "check_room",
    "export",
    "main_variable",
    "prepare_export",
]

#: Dims that may stand where ``band`` does: PCA/autoencoder scores are ``(component, y, x)``.
_SPECTRAL = ("band", "component")
#: Output suffix -> format.
SUFFIXES = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
}


class ExportResult(list[Path]):
    """The files written (a ``list[Path]``) plus what the export did.

    Attributes
    ----------
    dtype
        dtype of the values in the files (``float32``, ``uint8``, ...).
    max_abs_error
        Largest ``|exported - store value|`` (scaled images: after restoring
        ``q * scale + offset`` in float64); 0.0 for an exact export.
    clipped
        Values outside the chosen ``scale`` range, clipped (scaled images only).
    sidecars
        The sidecar files written (scaled images only).
    summary
        One line describing the export.
    """

    def __init__(
        self,
        files: Sequence[Path],
        *,
        dtype: str,
        max_abs_error: float,
        summary: str,
        clipped: int = 0,
        sidecars: Sequence[Path] = (),
    ) -> None:
        super().__init__(files)
        self.dtype = dtype
        self.max_abs_error = max_abs_error
        self.clipped = clipped
        self.sidecars = list(sidecars)
        self.summary = summary


def _format_of(out: Path) -> str:
    fmt = SUFFIXES.get(out.suffix.lower())
    if fmt is None:
        raise InputError(
            f"cannot export to {out.name}: unknown suffix {out.suffix or '(none)'!r}; "
            f"supported: {', '.join(SUFFIXES)}"
        )
    return fmt


def _check_options(out: Path, fmt: str, scale: str | None, bits: int | None) -> int | None:
    """Validate ``scale``/``bits`` for ``fmt`` before any data is read; the bits to use."""
    if fmt in ("tiff", "npy"):
        if scale is not None:
            raise InputError(
                f"--scale applies to .png/.jpg exports; {out.name} holds exact floats "
                "(drop --scale, or export .png with --scale for a scaled preview)"
            )
        if bits not in (None, 32, 64):
            raise InputError(
                f"--bits {bits} is not a float width: {out.suffix} exports write floats "
                "(--bits 32 or 64); for 8/16-bit integers export .png with --scale"
            )
        return bits
    if scale is None:
        raise InputError(
            f"cannot export {out.name} without --scale: PNG/JPEG hold only non-negative "
            "integers, so negative and fractional values would be lost; choose the range to "
            "map onto them with --scale minmax (or percentile:1,99 or fixed:A,B), or export "
            ".tif/.npy for exact floats"
        )
    allowed = (8,) if fmt == "jpeg" else (8, 16)
    if bits is not None and bits not in allowed:
        hint = "use .png for 16 bits" if fmt == "jpeg" else "use .tif/.npy for floats"
        raise InputError(
            f"--bits {bits} is not possible for {out.name} (PNG: 8 or 16, JPEG: 8); {hint}"
        )
    return 8 if bits is None else bits


def _cube_shaped(var: xr.DataArray) -> bool:
    dims = tuple(map(str, var.dims))
    return len(dims) in (3, 4) and dims[-2:] == CORE_DIMS[1:] and dims[-3] in _SPECTRAL


def main_variable(ds: xr.Dataset, store: Path | str = "the store") -> str:
    """The name of the store's main data variable: what export and report show by default.

    ``cube`` when there is one; else ``scores`` (a ``compress`` output: its PCA or
    autoencoder scores, ``(..., component, y, x)``); else the one variable shaped
    ``(..., band|component, y, x)`` (e.g. a ``filter`` output of another variable).

    Raises
    ------
    InputError
        None of these, or several candidates: the message names the variables present
        and says to choose one with ``--variable``.
    """
    for name in ("cube", "scores"):
        if name in ds.data_vars:
            return name
    shaped = [str(k) for k, v in ds.data_vars.items() if k != "mask" and _cube_shaped(v)]
    if len(shaped) == 1:
        return shaped[0]
    have = ", ".join(map(str, ds.data_vars)) or "none"
    why = (
        f"several variables shaped (..., band, y, x): {', '.join(shaped)}"
        if shaped
        else "no variable shaped (..., band|component, y, x)"
    )
    raise InputError(
        f"{store} has neither 'cube' nor 'scores' and {why} (has: {have}); "
        "choose one with --variable NAME"
    )


def _select(
    ds: xr.Dataset, variable: str | None, bands: Sequence[int] | None, store: Path | str
) -> tuple[xr.DataArray, list[int]]:
    if variable is None:
        variable = main_variable(ds, store)
    if variable not in ds.data_vars:
        have = ", ".join(map(str, ds.data_vars)) or "none"
        raise InputError(f"{store} has no variable {variable!r} to export (has: {have})")
    var = ds[variable]
    dims = tuple(map(str, var.dims))
    lead_ok = var.ndim == 3 or (var.ndim == 4 and dims[0] in LEADING_DIMS)
    core = ("band", *dims[-2:]) if len(dims) >= 3 and dims[-3] in _SPECTRAL else dims
    if core != CORE_DIMS or not lead_ok:
        raise InputError(
            f"{store}:{variable} has dims {dims}; export needs (band, y, x) or (component, "
            f"y, x), optionally with a leading {' or '.join(LEADING_DIMS)} dim"
        )
    if var.dtype.kind not in "fiu":
        raise InputError(f"{store}:{variable} has dtype {var.dtype}; only real values export")
    n = var.sizes[dims[-3]]
    idx = list(range(n)) if bands is None else [int(b) for b in bands]
    if not idx or any(not 0 <= b < n for b in idx):
        raise InputError(
            f"bad --bands {','.join(map(str, idx)) or '(empty)'}: {store}:{variable} has {n} "
            f"band(s), indices 0..{n - 1}"
        )
    if len(set(idx)) != len(idx) and len(idx) != 3:
        raise InputError(f"--bands lists a band twice ({','.join(map(str, idx))}); list each once")
    return (var if bands is None else var.isel({dims[-3]: idx})), idx


@dataclass
class ExportJob:
    """A validated export, ready to :meth:`run` (made by :func:`prepare_export`)."""

    var: xr.DataArray
    out: Path
    fmt: str
    bands: list[int]
    source: str
    bits: int | None
    spec: ScaleSpec | None
    plans: list[ImagePlan]
    georef: GeoRef | None = None

    def run(self) -> ExportResult:
        """Read the store and write the file(s).

        Raises :class:`~cubepipe.storage.errors.FileSystemError` for a full disk, a
        quota, a read-only filesystem, a missing permission or too many open files, after
        removing every temporary file."""
        with user_os_errors(self.out, "exporting to"):
            self.out.parent.mkdir(parents=True, exist_ok=True)
            return self._floats() if self.spec is None else self._images()

    def _floats(self) -> ExportResult:
        georef = self.georef if self.fmt == "tiff" else None
        r = export_floats(
            self.var,
            self.out,
            fmt=self.fmt,
            bits=self.bits,
            bands=self.bands,
            source=self.source,
            georef=georef,
        )
        src, dtype, err = self.var.dtype, r["dtype"], r["max_abs_error"]
        if not r["exact"]:
            how = f"rounded from the store's {src} values, max abs error {err:.3g}"
        elif src == dtype:
            how = f"bit-exact copy of the store's {src} values"
        else:
            how = f"the store's {src} values, widened exactly"
        stored = self.var.attrs.get("max_abs_error")
        if stored:
            enc = self.var.attrs.get("cubepipe_encoding", "its encoding")
            how += f"; the store itself is within {stored:.3g} of its source ({enc})"
        n_pages = int(np.prod(self.var.shape[:-2]))
        pages = f", {n_pages} page(s)" if self.fmt == "tiff" else ""
        if georef is not None:
            n_pages = int(np.prod(self.var.shape[:-3]))
            pages = f", GeoTIFF {crs_name(georef)}, {self.var.shape[-3]} band(s) per page"
            pages += f", {n_pages} page(s)" if n_pages > 1 else ""
        elif self.georef is not None:
            pages = " (no georeferencing: .npy has no place for it; export .tif for that)"
        shape = "x".join(map(str, self.var.shape))
        summary = f"wrote {self.out} ({self.var.name}: {self.fmt}, {dtype} {shape}{pages}; {how})"
        return ExportResult(
            [self.out], dtype=str(r["dtype"]), max_abs_error=r["max_abs_error"], summary=summary
        )

    def _images(self) -> ExportResult:
        assert self.bits is not None and self.spec is not None
        r = export_images(
            self.var,
            self.plans,
            fmt=self.fmt,
            spec=self.spec,
            bits=self.bits,
            bands=self.bands,
            source=self.source,
        )
        files = r["files"]
        names = str(files[0]) if len(files) == 1 else f"{files[0]} .. {files[-1].name}"
        kind = "RGB preview" if len(self.bands) == 3 else "grey"
        lo, hi = r["range"]
        summary = (
            f"wrote {len(files)} {self.fmt.upper()} file(s) {names} ({self.var.name}: "
            f"{self.bits}-bit {kind}, "
            f"--scale {self.spec} -> [{lo:.6g}, {hi:.6g}], NaN -> 0) + *.cubepipe.json sidecars; "
            f"q*scale+offset restores floats within {r['max_abs_error']:.3g}; "
            f"{r['clipped']} value(s) clipped"
        )
        if self.georef is not None:
            summary += f"; no georeferencing ({self.fmt.upper()}): export .tif for a GeoTIFF"
        return ExportResult(
            files,
            dtype=f"uint{self.bits}",
            max_abs_error=r["max_abs_error"],
            clipped=r["clipped"],
            sidecars=[sidecar_path(f) for f in files],
            summary=summary,
        )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_room(out: Path, nbytes: int) -> None:
    """Refuse an export to ``out`` up front (before any data is read) when its
    filesystem is mounted read-only or has less than ``nbytes`` free for this user.

    Advisory: space can still run out while writing (other writers, compressed sizes
    not known in advance); that is reported then, the same way.
    """
    for d in (out.parent, *out.parent.parents):
        try:
            st = os.statvfs(d)
            break
        except FileNotFoundError:
            continue
        except OSError:
            return  # cannot tell: the writes will say
    else:
        return
    if st.f_flag & os.ST_RDONLY:
        exc = OSError(errno.EROFS, os.strerror(errno.EROFS))
        raise FileSystemError(
            os_error_message(exc, out, "exporting to", detail=f"{d} is mounted read-only"),
            errno=errno.EROFS,
            path=out,
        )
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        detail = f"it needs {_size(nbytes)}, {d} has {_size(free)} free"
        raise FileSystemError(
            os_error_message(exc, out, "exporting to", detail=detail),
            errno=errno.ENOSPC,
            path=out,
        )


def prepare_export(
    store: str | Path,
    out: str | Path,
    *,
    bands: Sequence[int] | None = None,
    scale: str | None = None,
    bits: int | None = None,
    variable: str | None = None,
    overwrite: bool = False,
    allow_incomplete: bool = False,
) -> ExportJob:
    """Validate an export without reading any data (see :func:`export`): options, the
    store and variable, bands, and that no output file exists (unless ``overwrite``)."""
    out = Path(out)
    store = store if is_remote(store) else Path(store)
    check_disjoint(out, [store])  # e.g. -o STORE/cube/c/0/0/0 would replace a chunk
    fmt = _format_of(out)
    bits = _check_options(out, fmt, scale, bits)
    spec = parse_scale(scale) if scale is not None else None
    var, idx = _select(open_cube(store, allow_incomplete=allow_incomplete), variable, bands, store)
    plans: list[ImagePlan] = []
    n_values = int(np.prod(var.shape, dtype=np.int64))
    if spec is None:
        check_free([out], overwrite=overwrite)
        check_room(out, n_values * float_dtype(var, bits).itemsize)
    else:
        assert bits is not None  # _check_options gives every .png/.jpg export a bit depth
        if bits == 16 and len(idx) == 3:
            raise InputError(
                f"cannot write {out.name} as a 16-bit RGB PNG (Pillow writes RGB in 8 bits); "
                "use --bits 8 for the RGB preview, or export bands one at a time as 16-bit greys"
            )
        lead = str(var.dims[0]) if var.ndim == 4 else None
        n_lead = var.shape[0] if lead else 1
        plans = plan_images(out, lead_dim=lead, n_lead=n_lead, bands=idx)
        outputs = [p for pl in plans for p in (pl.path, sidecar_path(pl.path))]
        check_free(outputs, overwrite=overwrite)
        check_room(out, n_values * (bits // 8))  # the codes, written before the images
    georef = georef_of(var)
    if georef is not None and fmt == "tiff":
        rasterio_module(f"exporting the georeferenced {store}:{var.name} as a GeoTIFF")
    return ExportJob(var, out, fmt, idx, str(store), bits, spec, plans, georef)


def export(
    store: str | Path,
    out: str | Path,
    *,
    bands: Sequence[int] | None = None,
    scale: str | None = None,
    bits: int | None = None,
    variable: str | None = None,
    overwrite: bool = False,
    allow_incomplete: bool = False,
) -> ExportResult:
    """Export a store's variable to ``out``; the format follows its suffix.

    Parameters
    ----------
    store
        A cube store (opened with :func:`~cubepipe.storage.store.open_cube`, so encoded
        variables are decoded first).
    out
        Output file: ``.tif``/``.tiff``, ``.npy``, ``.png``, ``.jpg``/``.jpeg``. Image
        exports of several bands or of image/frame stores write numbered files beside it.
    bands
        Band indices to export, in that order (default: all). For PNG/JPEG one band makes
        a grey image, three an RGB preview, any other number one grey image per band.
    scale
        PNG/JPEG only, required: ``"minmax"``, ``"percentile:LO,HI"`` or ``"fixed:A,B"``.
    bits
        ``.tif``/``.npy``: 32 or 64 (float width). PNG: 8 (default) or 16. JPEG: 8.
    variable
        Data variable to export, dims ``(band|component, y, x)``, optionally with a
        leading ``image``/``frame`` dim. Default: the store's main one
        (:func:`main_variable`: ``cube``, else ``scores``, else the one cube-shaped
        variable).
    overwrite
        Replace existing output files (and sidecars).
    allow_incomplete
        Read a store whose writer did not finish.

    Returns
    -------
    ExportResult
        The files written (a list of paths), with ``dtype``, ``max_abs_error``,
        ``clipped``, ``sidecars`` and a one-line ``summary``.

    Raises
    ------
    InputError
        Unknown suffix, missing or bad ``scale``/``bits``/``bands``, a float narrowing
        that would overflow, a scale range over no finite values.
    StoreExistsError
        An output exists and ``overwrite`` is False.
    FileSystemError
        The output's filesystem is read-only or too full (checked up front where
        possible), a quota or a permission stopped a write, too many files are open;
        nothing is left behind.

    Notes
    -----
    Clipping (values outside the chosen scale range) also emits a
    :class:`~cubepipe.storage.errors.CubepipeWarning`.
    """
    return prepare_export(
        store,
        out,
        bands=bands,
        scale=scale,
        bits=bits,
        variable=variable,
        overwrite=overwrite,
        allow_incomplete=allow_incomplete,
    ).run()
