"""A corpus of hostile, damaged and awkward inputs for ``cubepipe ingest``.

Every :class:`Case` writes its input into a directory (:meth:`Case.make`) and says what
``cubepipe ingest SRC -o OUT.zarr`` must do with it:

- ``expect="ok"``: exit 0, and the store holds exactly what an independent reader
  (:attr:`Case.reference`: numpy, tifffile, Pillow or the frames that were encoded) gets
  from the source, bit for bit, in dtype :attr:`Case.dtype`;
- ``expect="error"``: exit 2 with a one-line message naming the file, and no store
  marked complete;
- ``expect="either"``: one of the two (e.g. a truncated JPEG, which decoders may or may
  not accept); when it succeeds the data must still equal the reference.

The files are small (the whole fast corpus is written in well under a second) except the
cases marked ``slow`` (full-size decompression bombs). Cases marked ``process`` could hang
a careless reader (FIFOs, character devices) and are run in a child process with a
timeout.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

try:
    import av
except ImportError:  # the video extra is optional
    av = None

__all__ = ["CASES", "Case", "Exploit", "png_bytes", "tiff_bytes"]

MARKER = "PWNED"


class Exploit:
    """Unpickling this runs ``touch MARKER``: what a hostile pickle can do to a loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@dataclass(frozen=True)
class Case:
    """One input (see the module docstring)."""

    name: str
    build: Callable[[Path, str], Path | str]
    expect: str
    reference: Callable[[Path], np.ndarray] | None = None
    dtype: str = "float32"
    args: tuple[str, ...] = ()
    process: bool = False
    slow: bool = False
    mentions: str | None = None
    tags: tuple[str, ...] = field(default=())

    def make(self, folder: Path) -> Path | str:
        """Write the input under ``folder``; returns SRC for ``cubepipe ingest``."""
        folder.mkdir(parents=True, exist_ok=True)
        return self.build(folder, self.name)

    @property
    def marker(self) -> str:
        """The file that must not exist afterwards (written only by unpickling)."""
        return MARKER


CASES: list[Case] = []


def case(name: str, expect: str, reference: Callable | None = None, **kw) -> Callable:
    def add(build: Callable[[Path, str], Path | str]) -> Callable:
        CASES.append(Case(name, build, expect, reference, **kw))
        return build

    return add


# -- value helpers ---------------------------------------------------------------------------


def specials(dtype: str, shape: tuple[int, ...] = (3, 8, 8), seed: int = 0) -> np.ndarray:
    """Random values of ``dtype`` with NaN, +-inf, -0.0, denormals and extremes first."""
    t = np.dtype(dtype)
    info = np.finfo(t)
    a = np.random.default_rng(seed).normal(0, 100, shape).astype(t)
    s = [np.nan, np.inf, -np.inf, -0.0, 0.0, info.smallest_subnormal, -info.smallest_subnormal]
    s += [info.smallest_normal, info.max, -info.max, info.eps]
    flat = a.reshape(-1)
    flat[: len(s)] = np.array(s, dtype=t)
    # a NaN with a payload other than the default one
    bits = flat[len(s) : len(s) + 1].view(f"u{t.itemsize}")
    exp = (1 << (info.bits - 1)) - (1 << info.nmant)  # sign clear, exponent all ones
    bits[...] = exp | 1
    return a


def bits_of(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


def _npy(d: Path, name: str, a: np.ndarray, suffix: str = ".npy") -> Path:
    p = d / f"{name}{suffix}"
    with p.open("wb") as fh:
        np.save(fh, a)
    return p


def _npy_header(shape: tuple[int, ...], descr: str = "<f4", payload: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue() + payload


def _load(dtype: str | None = "float32") -> Callable[[Path], np.ndarray]:
    """Reference for a 3-D ``(band, y, x)`` (or 2-D) .npy: numpy, then the cube's dtype."""

    def ref(p: Path) -> np.ndarray:
        a = np.load(p, allow_pickle=False)
        a = a[np.newaxis] if a.ndim == 2 else a
        return a.astype(dtype)

    return ref


def tiff_bytes(
    width: int,
    height: int,
    strips: list[bytes],
    *,
    rows_per_strip: int,
    bits: int = 32,
    sample_format: int = 3,
    compression: int = 1,
    byte_counts: list[int] | None = None,
) -> bytes:
    """A minimal little-endian grey TIFF, written by hand so headers can lie."""
    data = b"".join(strips)
    offsets, pos = [], 8
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    counts = byte_counts or [len(s) for s in strips]
    ifd_pos = 8 + len(data)
    n_entries = 10
    arrays_pos = ifd_pos + 2 + 12 * n_entries + 4
    extra = bytearray()

    def longs(values: list[int]) -> tuple[int, int, int]:
        if len(values) == 1:
            return (4, 1, values[0])
        at = arrays_pos + len(extra)
        extra.extend(struct.pack(f"<{len(values)}I", *values))
        return (4, len(values), at)

    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, compression),
        (262, 3, 1, 1),
        (273, *longs(offsets)),
        (277, 3, 1, 1),
        (278, 4, 1, rows_per_strip),
        (279, *longs(counts)),
        (339, 3, 1, sample_format),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
    return b"II*\x00" + struct.pack("<I", ifd_pos) + data + ifd + b"\0\0\0\0" + bytes(extra)


def deflate_zeros(n: int, level: int = 6) -> bytes:
    """zlib stream of ``n`` zero bytes, compressed 16 MiB at a time."""
    comp = zlib.compressobj(level)
    block = bytes(16 * 2**20)
    out = []
    while n > 0:
        k = min(n, len(block))
        out.append(comp.compress(memoryview(block)[:k]))
        n -= k
    out.append(comp.flush())
    return b"".join(out)


def png_bytes(width: int, height: int, idat: bytes, *, depth: int = 8, colour: int = 0) -> bytes:
    """A PNG written by hand (IHDR, one IDAT, IEND) so headers can lie."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _pillow(mode: str | None = None) -> Callable[[Path], np.ndarray]:
    def ref(p: Path) -> np.ndarray:
        with Image.open(p) as im:
            im.load()
            if mode and im.mode != mode:
                im = im.convert(mode)
            a = np.asarray(im)
        a = a[np.newaxis] if a.ndim == 2 else np.moveaxis(a, -1, 0)
        return a.astype(np.float32)

    return ref


def _tifffile(dtype: str = "float32") -> Callable[[Path], np.ndarray]:
    def ref(p: Path) -> np.ndarray:
        a = tifffile.imread(p)
        return (a[np.newaxis] if a.ndim == 2 else a).astype(dtype)

    return ref


def _rgb(shape: tuple[int, int] = (24, 32), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


# -- .npy ------------------------------------------------------------------------------------


@case("npy-f32-specials", "ok", _load("float32"))
def _(d: Path, n: str) -> Path:
    return _npy(d, n, specials("float32"))


@case("npy-f64-specials", "ok", _load("float64"), dtype="float64")
def _(d: Path, n: str) -> Path:
    return _npy(d, n, specials("float64"))


@case("npy-f16-specials", "ok", _load("float32"))
def _(d: Path, n: str) -> Path:
    return _npy(d, n, specials("float16"))


@case("npy-big-endian-fortran", "ok", _load("float32"))
def _(d: Path, n: str) -> Path:
    return _npy(d, n, np.asfortranarray(specials("float32").astype(">f4")))


@case("npy-2d-bool", "ok", _load("float32"))
def _(d: Path, n: str) -> Path:
    return _npy(d, n, np.random.default_rng(1).random((9, 7)) > 0.5)


@case("npy-longdouble", "ok", _load("float64"), dtype="float64")
def _(d: Path, n: str) -> Path:
    a = np.random.default_rng(2).normal(0, 1e300, (2, 5, 5)).astype(np.longdouble)
    a[0, 0, :3] = [np.nan, -0.0, np.inf]
    return _npy(d, n, a)


@case("npy-longdouble-overflow", "error")
def _(d: Path, n: str) -> Path:
    a = np.ones((2, 5, 5), dtype=np.longdouble)
    if np.finfo(np.longdouble).max > np.finfo(np.float64).max:
        a[1, 2, 3] = np.longdouble(np.finfo(np.float64).max) * 16
    else:  # no wider long double here: overflow float32 instead
        a[1, 2, 3] = 1e300
    return _npy(d, n, a)


@case("npy-f64-overflows-f32", "error", args=("--dtype", "float32"))
def _(d: Path, n: str) -> Path:
    a = np.ones((2, 5, 5))
    a[1, 1, 1] = 1e300
    return _npy(d, n, a)


@case("npy-int64-not-exact", "error", args=("--dtype", "float64"))
def _(d: Path, n: str) -> Path:
    a = np.arange(2 * 5 * 5, dtype=np.int64).reshape(2, 5, 5)
    a[1, 4, 4] = 2**53 + 1
    return _npy(d, n, a)


@case("npy-uint64-not-exact", "error", args=("--dtype", "float64"))
def _(d: Path, n: str) -> Path:
    a = np.zeros((2, 5, 5), dtype=np.uint64)
    a[0, 0, 1] = 2**64 - 1
    return _npy(d, n, a)


@case("npy-int64-exact", "ok", _load("float64"), dtype="float64", args=("--dtype", "float64"))
def _(d: Path, n: str) -> Path:
    a = np.arange(2 * 5 * 5, dtype=np.int64).reshape(2, 5, 5) * 2**40 - 2**52
    a[0, 0, 0] = 2**53
    a[0, 0, 1] = -(2**53)
    return _npy(d, n, a)


@case("npy-int64-no-dtype", "error")
def _(d: Path, n: str) -> Path:
    return _npy(d, n, np.arange(50, dtype=np.int64).reshape(2, 5, 5))


@case("npy-4d-stack", "ok", _load("float32"))
def _(d: Path, n: str) -> Path:
    return _npy(d, n, np.arange(2 * 3 * 6 * 6, dtype=np.uint8).reshape(2, 3, 6, 6))


@case("npy-truncated", "error")
def _(d: Path, n: str) -> Path:
    raw = _npy(d, "full", specials("float32", (4, 16, 16))).read_bytes()
    return _write(d / f"{n}.npy", raw[: len(raw) // 2])


@case("npy-zero-byte", "error")
def _(d: Path, n: str) -> Path:
    return _write(d / f"{n}.npy", b"")


@case("npy-garbage", "error")
def _(d: Path, n: str) -> Path:
    return _write(d / f"{n}.npy", np.random.default_rng(3).bytes(4096))


@case("npy-magic-then-garbage", "error")
def _(d: Path, n: str) -> Path:
    return _write(d / f"{n}.npy", b"\x93NUMPY\x01\x00\x40\x00" + b"{'descr': <f4 !!!" + b" " * 60)


@case("npy-lying-shape", "error")
def _(d: Path, n: str) -> Path:
    return _write(d / f"{n}.npy", _npy_header((100000, 100000, 100000), payload=bytes(64)))


@case("npy-shape-overflows-int64", "error")
def _(d: Path, n: str) -> Path:
    # 2**32 * 2**32 * 4 wraps to 0 in int64 arithmetic: a size check in int64 passes
    return _write(d / f"{n}.npy", _npy_header((2**32, 2**32, 4), payload=bytes(64)))


@case("npy-pickle-payload", "error")
def _(d: Path, n: str) -> Path:
    a = np.empty((2, 2, 2), dtype=object)
    a[...] = 0
    a[0, 0, 0] = Exploit(d / MARKER)
    return _npy(d, n, a)


@case("npy-pickle-payload-1d", "error")
def _(d: Path, n: str) -> Path:
    a = np.empty(1, dtype=object)
    a[0] = Exploit(d / MARKER)
    return _npy(d, n, a)


@case("npy-structured", "error")
def _(d: Path, n: str) -> Path:
    return _npy(d, n, np.zeros((4, 4), dtype=[("a", "f4"), ("b", "i2")]))


@case("npy-complex", "error")
def _(d: Path, n: str) -> Path:
    return _npy(d, n, np.zeros((2, 4, 4), dtype=np.complex64))


@case("npy-0d", "error")
def _(d: Path, n: str) -> Path:
    return _npy(d, n, np.array(1.5, dtype=np.float32))


@case("npy-1d", "error")
def _(d: Path, n: str) -> Path:
    return _npy(d, n, np.arange(10, dtype=np.float32))


@case("npy-5d", "error")
def _(d: Path, n: str) -> Path:
    return _npy(d, n, np.zeros((2, 2, 2, 3, 3), dtype=np.float32))


@case("npy-empty-axis", "error")
def _(d: Path, n: str) -> Path:
    return _npy(d, n, np.zeros((3, 0, 4), dtype=np.float32))


@case("npy-named-tif", "ok", _load("float32"))
def _(d: Path, n: str) -> Path:
    return _npy(d, n, specials("float32"), suffix=".tif")


# -- TIFF ------------------------------------------------------------------------------------


@case("tiff-f32-specials", "ok", _tifffile("float32"))
def _(d: Path, n: str) -> Path:
    p = d / f"{n}.tif"
    tifffile.imwrite(p, specials("float32"), photometric="minisblack")
    return p


@case("tiff-deflate-tiled-specials", "ok", _tifffile("float32"))
def _(d: Path, n: str) -> Path:
    p = d / f"{n}.tif"
    a = specials("float32", (3, 40, 50))
    tifffile.imwrite(p, a, photometric="minisblack", compression="zlib", tile=(16, 16))
    return p


@case("tiff-lzw-strips-u16", "ok", _tifffile("float32"))
def _(d: Path, n: str) -> Path:
    p = d / f"{n}.tif"
    a = np.random.default_rng(4).integers(0, 2**16, (70, 90), dtype=np.uint16)
    tifffile.imwrite(p, a, compression="lzw", rowsperstrip=7)
    return p


@case("tiff-f64", "ok", _tifffile("float64"), dtype="float64")
def _(d: Path, n: str) -> Path:
    p = d / f"{n}.tif"
    tifffile.imwrite(p, specials("float64", (2, 9, 11)), photometric="minisblack")
    return p


@case("tiff-truncated", "error")
def _(d: Path, n: str) -> Path:
    p = d / "full.tif"
    tifffile.imwrite(p, specials("float32", (3, 64, 64)), photometric="minisblack")
    raw = p.read_bytes()
    return _write(d / f"{n}.tif", raw[: len(raw) // 2])


@case("tiff-truncated-deflate", "error")
def _(d: Path, n: str) -> Path:
    a = np.random.default_rng(5).normal(size=(64, 64)).astype(np.float32)
    strip = zlib.compress(a.tobytes())
    raw = tiff_bytes(64, 64, [strip[: len(strip) // 2]], rows_per_strip=64, compression=8)
    return _write(d / f"{n}.tif", raw)


@case("tiff-zero-byte", "error")
def _(d: Path, n: str) -> Path:
    return _write(d / f"{n}.tif", b"")


@case("tiff-garbage", "error")
def _(d: Path, n: str) -> Path:
    return _write(d / f"{n}.tif", np.random.default_rng(6).bytes(5000))


@case("tiff-magic-then-garbage", "error")
def _(d: Path, n: str) -> Path:
    return _write(d / f"{n}.tif", b"II*\x00" + np.random.default_rng(7).bytes(5000))


@case("tiff-lying-size-raw", "error")
def _(d: Path, n: str) -> Path:
    # declares 100000 x 100000 float32 uncompressed; the strip is 64 bytes
    return _write(d / f"{n}.tif", tiff_bytes(100000, 100000, [bytes(64)], rows_per_strip=100000))


@case("tiff-bomb-header", "error")
def _(d: Path, n: str) -> Path:
    # declares one deflate strip of 20000 x 20000 float32 (1.5 GiB decoded); data tiny
    strip = zlib.compress(bytes(4096))
    return _write(
        d / f"{n}.tif", tiff_bytes(20000, 20000, [strip], rows_per_strip=20000, compression=8)
    )


@case("tiff-bomb-moderate", "ok", _tifffile("float32"))
def _(d: Path, n: str) -> Path:
    # one deflate strip of 2400 x 2400 float32 (22 MiB decoded, ~22 KiB on disk): must be
    # inflated once, not once per 512 x 512 block
    ny = nx = 2400
    strip = deflate_zeros(ny * nx * 4)
    return _write(d / f"{n}.tif", tiff_bytes(nx, ny, [strip], rows_per_strip=ny, compression=8))


@case("tiff-bomb-full", "error", slow=True)
def _(d: Path, n: str) -> Path:
    # a real deflate stream: 1.5 MB that inflates to 20000 x 20000 float32 (1.6 GB)
    ny = nx = 20000
    strip = deflate_zeros(ny * nx * 4, level=9)
    return _write(d / f"{n}.tif", tiff_bytes(nx, ny, [strip], rows_per_strip=ny, compression=8))


@case("tiff-damaged-deflate", "error")
def _(d: Path, n: str) -> Path:
    strips = [np.random.default_rng(8).bytes(300) for _ in range(4)]
    return _write(d / f"{n}.tif", tiff_bytes(40, 40, strips, rows_per_strip=10, compression=8))


@case("tiff-named-png", "ok", _tifffile("float32"))
def _(d: Path, n: str) -> Path:
    p = d / f"{n}.png"
    tifffile.imwrite(p, np.arange(2 * 8 * 8, dtype=np.int16).reshape(2, 8, 8))
    return p


# -- PNG / JPEG ------------------------------------------------------------------------------


def _pil_save(d: Path, name: str, a: np.ndarray, suffix: str, **kw) -> Path:
    p = d / f"{name}{suffix}"
    Image.fromarray(a).save(p, **kw)
    return p


@case("png-rgb", "ok", _pillow())
def _(d: Path, n: str) -> Path:
    return _pil_save(d, n, _rgb(), ".png")


@case("png-grey16", "ok", _pillow())
def _(d: Path, n: str) -> Path:
    a = np.random.default_rng(9).integers(0, 2**16, (20, 30), dtype=np.uint16)
    return _pil_save(d, n, a, ".png")


@case("png-named-tif", "ok", _pillow())
def _(d: Path, n: str) -> Path:
    return _pil_save(d, n, _rgb(), ".tif", format="PNG")


@case("png-truncated", "error")
def _(d: Path, n: str) -> Path:
    raw = _pil_save(d, "full", _rgb((64, 64)), ".png").read_bytes()
    return _write(d / f"{n}.png", raw[: len(raw) // 2])


@case("png-zero-byte", "error")
def _(d: Path, n: str) -> Path:
    return _write(d / f"{n}.png", b"")


@case("png-garbage", "error")
def _(d: Path, n: str) -> Path:
    return _write(d / f"{n}.png", b"\x89PNG\r\n\x1a\n" + np.random.default_rng(10).bytes(3000))


@case("png-lying-ihdr", "error")
def _(d: Path, n: str) -> Path:
    return _write(d / f"{n}.png", png_bytes(100000, 100000, zlib.compress(bytes(1000))))


@case("png-lying-ihdr-small-data", "error")
def _(d: Path, n: str) -> Path:
    # within the pixel limit, but the data stop after a few rows
    return _write(d / f"{n}.png", png_bytes(3000, 3000, zlib.compress(bytes(3001 * 3))))


@case("png-bomb-small", "error")
def _(d: Path, n: str) -> Path:
    # 9500 x 9500 grey zeros (90 M pixels, over Pillow's MAX_IMAGE_PIXELS) in ~90 KB
    w = h = 9500
    return _write(d / f"{n}.png", png_bytes(w, h, deflate_zeros(h * (w + 1))))


@case("png-bomb-full", "error", slow=True)
def _(d: Path, n: str) -> Path:
    # 20000 x 20000 RGB zeros (1.2 GB decoded) in ~1.2 MB
    w = h = 20000
    return _write(d / f"{n}.png", png_bytes(w, h, deflate_zeros(h * (3 * w + 1), 9), colour=2))


def _sidecar(d: Path, name: str, **fields) -> Path:
    import json  # noqa: PLC0415

    p = _pil_save(d, name, np.arange(48, dtype=np.uint8).reshape(6, 8), ".png")
    side = {"cubepipe_sidecar": 1, "scale": 0.5, "offset": -1.0, "max_abs_error": 0.25}
    side["bits"] = 8
    side.update(fields)
    p.with_name(p.name + ".cubepipe.json").write_text(json.dumps(side))
    return p


@case("png-sidecar-ok", "ok", lambda p: _pillow()(p) * np.float32(0.5) - np.float32(1.0))
def _(d: Path, n: str) -> Path:
    return _sidecar(d, n)


@case("png-sidecar-scale-mapping", "error", mentions="cubepipe.json")
def _(d: Path, n: str) -> Path:
    return _sidecar(d, n, scale={})


@case("png-sidecar-scale-text", "error", mentions="cubepipe.json")
def _(d: Path, n: str) -> Path:
    return _sidecar(d, n, scale="big")


@case("png-sidecar-scale-nan", "error", mentions="cubepipe.json")
def _(d: Path, n: str) -> Path:
    return _sidecar(d, n, offset=float("nan"))


@case("png-sidecar-bits-text", "error", mentions="cubepipe.json")
def _(d: Path, n: str) -> Path:
    return _sidecar(d, n, bits="eight")


@case("png-sidecar-error-list", "error", mentions="cubepipe.json")
def _(d: Path, n: str) -> Path:
    return _sidecar(d, n, max_abs_error=[1, 2])


@case("png-sidecar-nan-value-text", "error", mentions="cubepipe.json")
def _(d: Path, n: str) -> Path:
    return _sidecar(d, n, nan_value="x")


@case("png-sidecar-nested-scale", "error", mentions="cubepipe.json")
def _(d: Path, n: str) -> Path:
    return _sidecar(d, n, scale=[[1, 2], [3]])


@case("png-sidecar-not-object", "error", mentions="cubepipe.json")
def _(d: Path, n: str) -> Path:
    p = _sidecar(d, n)
    p.with_name(p.name + ".cubepipe.json").write_text("[1, 2, 3]")
    return p


@case("jpeg-rgb", "ok", _pillow())
def _(d: Path, n: str) -> Path:
    return _pil_save(d, n, _rgb(), ".jpg", quality=90)


@case("jpeg-named-png", "ok", _pillow())
def _(d: Path, n: str) -> Path:
    return _pil_save(d, n, _rgb(), ".png", format="JPEG")


@case("jpeg-truncated", "either", _pillow())
def _(d: Path, n: str) -> Path:
    raw = _pil_save(d, "full", _rgb((64, 64)), ".jpg").read_bytes()
    return _write(d / f"{n}.jpg", raw[: len(raw) // 2])


@case("jpeg-garbage", "error")
def _(d: Path, n: str) -> Path:
    return _write(d / f"{n}.jpg", b"\xff\xd8\xff" + np.random.default_rng(11).bytes(3000))


@case("jpeg-lying-size", "error")
def _(d: Path, n: str) -> Path:
    raw = bytearray(_pil_save(d, "full", _rgb((16, 16)), ".jpg").read_bytes())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return _write(d / f"{n}.jpg", bytes(raw))


# -- ENVI ------------------------------------------------------------------------------------


def _envi(
    d: Path, name: str, a: np.ndarray, *, interleave: str = "bsq", header: str = "", raw=None
) -> Path:
    code = {"u1": 1, "i2": 2, "i4": 3, "f4": 4, "f8": 5, "u2": 12}[a.dtype.str[1:]]
    bands, lines, samples = a.shape
    order = {"bsq": (0, 1, 2), "bil": (1, 0, 2), "bip": (1, 2, 0)}[interleave]
    (d / f"{name}.raw").write_bytes(
        raw if raw is not None else np.ascontiguousarray(a.transpose(order)).tobytes()
    )
    hdr = d / f"{name}.hdr"
    hdr.write_text(
        "ENVI\n"
        + (
            header
            or f"samples = {samples}\nlines = {lines}\nbands = {bands}\nheader offset = 0\n"
            f"data type = {code}\ninterleave = {interleave}\n"
            f"byte order = {0 if a.dtype.str[0] in '<|' else 1}\n"
        )
    )
    return hdr


def _envi_ref(shape: tuple[int, int, int], dtype: str, interleave: str, out: str = "float32"):
    def ref(p: Path) -> np.ndarray:
        flat = np.fromfile(p.with_suffix(".raw"), dtype=dtype)
        order = {"bsq": (0, 1, 2), "bil": (1, 0, 2), "bip": (1, 2, 0)}[interleave]
        file_shape = tuple(shape[i] for i in order)
        return flat.reshape(file_shape).transpose(np.argsort(order)).astype(out)

    return ref


@case("envi-f32-specials", "ok", _envi_ref((3, 8, 8), "<f4", "bsq"))
def _(d: Path, n: str) -> Path:
    return _envi(d, n, specials("float32"))


@case("envi-bip-i16-big-endian", "ok", _envi_ref((4, 5, 6), ">i2", "bip"))
def _(d: Path, n: str) -> Path:
    a = np.random.default_rng(12).integers(-3000, 3000, (4, 5, 6)).astype(">i2")
    return _envi(d, n, a, interleave="bip")


@case("envi-truncated-raw", "error")
def _(d: Path, n: str) -> Path:
    a = specials("float32")
    return _envi(d, n, a, raw=a.tobytes()[:100])


@case("envi-lying-header", "error")
def _(d: Path, n: str) -> Path:
    header = "samples = 100000\nlines = 100000\nbands = 1000\ndata type = 4\n"
    return _envi(d, n, specials("float32"), header=header)


@case("envi-huge-offset", "error")
def _(d: Path, n: str) -> Path:
    header = "samples = 8\nlines = 8\nbands = 3\ndata type = 4\nheader offset = 99999999999999\n"
    return _envi(d, n, specials("float32"), header=header)


@case("envi-garbage-header", "error")
def _(d: Path, n: str) -> Path:
    p = _envi(d, n, specials("float32"))
    return _write(p, b"ENVI\n" + np.random.default_rng(13).bytes(2000))


@case("envi-unclosed-brace", "error")
def _(d: Path, n: str) -> Path:
    header = "samples = 8\nlines = 8\nbands = 3\ndata type = 4\nwavelength = {1, 2,\n3\n"
    return _envi(d, n, specials("float32"), header=header)


@case("envi-zero-byte-header", "error")
def _(d: Path, n: str) -> Path:
    return _write(_envi(d, n, specials("float32")), b"")


@case("envi-missing-binary", "error")
def _(d: Path, n: str) -> Path:
    p = _envi(d, n, specials("float32"))
    p.with_suffix(".raw").unlink()
    return p


# -- video -----------------------------------------------------------------------------------


def _frames() -> np.ndarray:
    return np.random.default_rng(14).integers(0, 256, (5, 16, 24), dtype=np.uint8)


def _video(d: Path, name: str) -> Path:
    p = d / f"{name}.mkv"
    with av.open(str(p), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.height, stream.width = 16, 24
        stream.pix_fmt = "gray"
        for image in _frames():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="gray")))
        container.mux(stream.encode())
    return p


if av is not None:

    @case("video-ffv1-grey", "ok", lambda p: _frames()[:, None].astype(np.float32))
    def _(d: Path, n: str) -> Path:
        return _video(d, n)

    def _decoded(p: Path) -> np.ndarray:
        """What plain sequential PyAV decoding gets: some first frames, exactly."""
        with av.open(str(p)) as container:
            frames = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
        a = np.stack(frames)
        np.testing.assert_array_equal(a, _frames()[: len(a)])
        return a[:, None].astype(np.float32)

    @case("video-truncated", "either", _decoded)
    def _(d: Path, n: str) -> Path:
        raw = _video(d, "full").read_bytes()
        return _write(d / f"{n}.mkv", raw[: len(raw) * 2 // 3])

    @case("video-garbage", "error", args=("--format", "video"))
    def _(d: Path, n: str) -> Path:
        return _write(d / f"{n}.mp4", np.random.default_rng(15).bytes(5000))

    @case("video-zero-byte", "error", args=("--format", "video"))
    def _(d: Path, n: str) -> Path:
        return _write(d / f"{n}.mkv", b"")


# -- paths, links and special files ----------------------------------------------------------


@case("path-non-ascii and spaces", "ok", _load("float32"), mentions=None)
def _(d: Path, n: str) -> Path:
    sub = d / "dïr with spaces" / "数据"
    sub.mkdir(parents=True)
    return _npy(sub, "cübe ñame", specials("float32"))


@case("symlink-to-file", "ok", _load("float32"))
def _(d: Path, n: str) -> Path:
    target = _npy(d, "target", specials("float32"))
    link = d / f"{n}.npy"
    link.symlink_to(target)
    return link


@case("symlink-dangling", "error")
def _(d: Path, n: str) -> Path:
    link = d / f"{n}.npy"
    link.symlink_to(d / "nowhere.npy")
    return link


@case("symlink-loop", "error")
def _(d: Path, n: str) -> Path:
    a, b = d / f"{n}.npy", d / f"{n}-b.npy"
    a.symlink_to(b)
    b.symlink_to(a)
    return a


@case("missing-file", "error")
def _(d: Path, n: str) -> Path:
    return d / f"{n}.npy"


@case("empty-directory", "error")
def _(d: Path, n: str) -> Path:
    (d / n).mkdir()
    return d / n


@case("fifo-named-npy", "error", process=True)
def _(d: Path, n: str) -> Path:
    p = d / f"{n}.npy"
    os.mkfifo(p)
    return p


@case("fifo-as-tiff", "error", process=True, args=("--format", "tiff"))
def _(d: Path, n: str) -> Path:
    p = d / f"{n}.tif"
    os.mkfifo(p)
    return p


@case("dev-zero-as-npy", "error", process=True, args=("--format", "npy"), mentions="zero")
def _(d: Path, n: str) -> str:
    return "/dev/zero"


@case("dev-zero-as-video", "error", process=True, args=("--format", "video"), mentions="zero")
def _(d: Path, n: str) -> str:
    return "/dev/zero"


@case("dev-urandom-auto", "error", process=True, mentions="urandom")
def _(d: Path, n: str) -> str:
    return "/dev/urandom"
