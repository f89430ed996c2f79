"""Direct chunk I/O for the zarr v3 layouts cubepipe writes; zarr-python for anything else.

cubepipe's stores use a regular chunk grid and the default chunk-key encoding, without
sharding, and one of two codec chains: ``bytes -> blosc(lz4, shuffle) -> crc32c`` (the
default since issue 19, chosen by measurement: docs/DESIGN.md) or ``bytes -> zstd``
(every older store; with or without zstd's frame checksum). For exactly those layouts a
chunk is one file, ``<array>/c/<i>/<j>/<k>``, holding the chunk's raw bytes (edge chunks
padded to the full chunk shape) as one zstd frame, or as one blosc buffer followed by the
little-endian CRC-32C of that buffer. Reading or writing such a file directly (one
``read``, one codec call into a preallocated buffer, no event loop) costs 70-98% of the
CPU time of the same chunk through zarr-python 3.1's codec pipeline, and less than
through zarrs' Rust pipeline (benchmarks/bench_zarr_pipeline.py; the numbers and the
decision to keep this module are in docs/DESIGN.md).

The files are the same bytes zarr-python writes and reads (both use numcodecs' zstd and
blosc, and google-crc32c), so a store stays a plain zarr v3 store:
tests/storage/test_chunkio.py and test_codecs.py round-trip chunks through both. A chunk
is checked before it is used: the zstd frame's checksum and size, or the CRC-32C and the
blosc header's sizes, so a chunk cut short or with a flipped bit is an error, never
data. Any other layout (other codecs, blosc without crc32c, sharding, another key
encoding, a big-endian chunk on this machine, a non-local store) gets ``None`` from
:func:`direct_layout` and is read and written through zarr-python as before; so does
every store when the environment says ``CUBEPIPE_DIRECT_IO=0`` (the off switch, for a
zarr release this module was not verified against: see the upper bound on zarr in
pyproject.toml).

Writes go to a temporary file that is renamed over the chunk, so a killed writer never
leaves a half-written chunk behind.

A command that reads its input twice (fit, then apply) can keep decoded chunks of the
first pass for the second, up to a byte budget (:class:`KeptChunks`); what does not fit
is read again. Kept chunks are read-only, so a kernel that wrote into its input would
fail loudly rather than corrupt the second pass.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs.blosc
import numpy as np
from numcodecs import Blosc, Zstd

from .errors import InvalidStoreError

# Blosc's global context (numcodecs' default from the main thread) compresses a chunk's
# blocks on internal threads and stores them in the order they finish, so the same chunk
# could be written as different bytes; its contextual API (one thread, what every other
# thread gets) is deterministic. zarr-python sets the same on import (zarr/codecs/blosc.py).
numcodecs.blosc.use_threads = False

__all__ = ["ChunkLayout", "DirectChunkArray", "KeptChunks", "direct_layout", "largest_chunk"]

_NATIVE = "little" if sys.byteorder == "little" else "big"
_DTYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
}  # fmt: skip


@dataclass(frozen=True)
class ChunkLayout:
    """Where and how one zarr v3 array's chunks are stored, for direct I/O.

    Small and picklable, so dask can ship it to distributed workers.
    """

    root: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    separator: str
    #: zstd's level and frame checksum (``codec == "zstd"``); blosc's clevel.
    level: int
    checksum: bool
    #: A missing chunk file is an error (chunks of a complete cubepipe store all exist)
    #: rather than the fill value (zarr's semantics, kept for every other store).
    strict: bool = False
    #: ``"zstd"`` or ``"blosc"``: the bytes-to-bytes codec after ``bytes``.
    codec: str = "zstd"
    #: blosc's configuration (``codec == "blosc"``): compressor, shuffle (numcodecs'
    #: integer), type size, block size.
    cname: str = ""
    shuffle: int = 0
    typesize: int = 0
    blocksize: int = 0
    #: The chain ends with the ``crc32c`` codec (4 bytes, little-endian, after the rest).
    crc32c: bool = False

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of chunks along each dim."""
        return tuple(math.ceil(s / c) for s, c in zip(self.shape, self.chunks, strict=True))

    def chunk_path(self, idx: tuple[int, ...]) -> str:
        """File holding chunk ``idx`` (default v3 key encoding: ``c/i/j/k``)."""
        key = self.separator.join(["c", *map(str, idx)])
        return os.path.join(self.root, *key.split("/"))

    def block_shape(self, idx: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of chunk ``idx`` inside the array (edge chunks are cut short)."""
        return tuple(
            min(c, s - i * c) for i, c, s in zip(idx, self.chunks, self.shape, strict=True)
        )

    def read_chunk(self, idx: tuple[int, ...]) -> np.ndarray:
        """Chunk ``idx`` as a new array of :meth:`block_shape`; a missing file reads as the
        fill value, as zarr-python reads it."""
        shape = self.block_shape(idx)
        path = self.chunk_path(idx)
        try:
            with open(path, "rb") as fh:
                encoded = fh.read()
        except FileNotFoundError:
            if self.strict:
                raise InvalidStoreError(
                    f"chunk {idx} of variable {os.path.basename(self.root)!r} is missing "
                    f"({path}) from a store marked complete: the store was damaged after it "
                    "was written; re-run the step that wrote it with --overwrite"
                ) from None
            return np.full(shape, self.fill_value, dtype=self.dtype)
        full = np.empty(self.chunks, dtype=self.dtype)
        try:
            full = self._decode(encoded, full)
        except Exception as exc:  # numcodecs raises RuntimeError/ValueError for bad frames
            raise InvalidStoreError(
                f"chunk file {path} is damaged ({exc}); re-run the step that wrote this "
                "store with --overwrite"
            ) from exc
        if shape == self.chunks:
            return full
        return full[tuple(slice(0, n) for n in shape)].copy()

    def write_chunk(self, idx: tuple[int, ...], block: np.ndarray) -> None:
        """Encode ``block`` (of :meth:`block_shape`) and put it in place atomically."""
        shape = self.block_shape(idx)
        if tuple(block.shape) != shape:
            raise ValueError(f"block {idx} has shape {block.shape}, expected {shape}")
        if shape == self.chunks:
            full = np.ascontiguousarray(block, dtype=self.dtype)
        else:
            full = np.full(self.chunks, self.fill_value, dtype=self.dtype)
            full[tuple(slice(0, n) for n in shape)] = block
        path = self.chunk_path(idx)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.partial"
        with open(tmp, "wb") as fh:
            for part in self._encode(full):
                fh.write(part)
        os.replace(tmp, path)

    def _encode(self, full: np.ndarray) -> list[bytes]:
        """The chunk file's contents (in parts, to spare a copy) for the whole chunk."""
        if self.codec == "blosc":
            body = Blosc(
                cname=self.cname,
                clevel=self.level,
                shuffle=self.shuffle,
                blocksize=self.blocksize,
                typesize=self.typesize,
            ).encode(full)
        else:
            body = Zstd(level=self.level, checksum=self.checksum).encode(full)
        if not self.crc32c:
            return [body]
        return [body, _crc32c(body)]

    def _decode(self, encoded: bytes, full: np.ndarray) -> np.ndarray:
        """Decode a chunk file's bytes into ``full`` (or a new array of its shape): every
        byte checked or written, any mismatch a ValueError/RuntimeError."""
        body: Any = encoded
        if self.crc32c:
            if len(encoded) < 4:
                raise ValueError(f"{len(encoded)} bytes, too short for its CRC-32C")
            body = np.frombuffer(encoded, dtype=np.uint8)[:-4]
            if _crc32c(body) != encoded[-4:]:
                raise ValueError("its CRC-32C does not match its contents")
        if self.codec == "blosc":
            nbytes, cbytes = blosc_sizes(body)
            if nbytes != full.nbytes or cbytes != len(body):
                raise ValueError(
                    f"its blosc header states {nbytes} bytes in {cbytes}, not "
                    f"{full.nbytes} in {len(body)}"
                )
            Blosc().decode(body, out=full)
            return full
        if frame_content_size(body) == full.nbytes:
            # zstd checks that a frame decodes to exactly the size its header states,
            # and a trailing frame would overflow ``full``: every byte is written.
            Zstd().decode(body, out=full)
            return full
        raw = Zstd().decode(body)  # no size in the header, or the wrong one: measure
        if len(raw) != full.nbytes:
            raise ValueError(f"it decodes to {len(raw)} bytes, not {full.nbytes}")
        return np.frombuffer(raw, dtype=self.dtype).reshape(self.chunks).copy()


def _crc32c(data: Any) -> bytes:
    """CRC-32C of ``data`` as the zarr v3 ``crc32c`` codec stores it (uint32, little-endian)."""
    return int(google_crc32c.value(data)).to_bytes(4, "little")


def blosc_sizes(encoded: Any) -> tuple[int, int]:
    """(decoded bytes, encoded bytes) a blosc 1 header states (bytes 4-8 and 12-16, little
    endian); (-1, -1) when ``encoded`` is shorter than a header."""
    if len(encoded) < 16:
        return -1, -1
    head = bytes(encoded[:16])
    return int.from_bytes(head[4:8], "little"), int.from_bytes(head[12:16], "little")


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def frame_content_size(encoded: Any) -> int | None:
    """The decoded size a zstd frame header declares (RFC 8878, 3.1.1.1), or None when
    ``encoded`` does not start with a frame header that states one."""
    encoded = bytes(encoded[:18])  # a frame header is at most 18 bytes
    if len(encoded) < 6 or encoded[:4] != _ZSTD_MAGIC:
        return None
    fhd = encoded[4]
    fcs_flag, single = fhd >> 6, (fhd >> 5) & 1
    did_size = (0, 1, 2, 4)[fhd & 3]
    start = 5 + (0 if single else 1) + did_size
    size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if size == 0 or len(encoded) < start + size:
        return None
    value = int.from_bytes(encoded[start : start + size], "little")
    return value + 256 if size == 2 else value


def direct_io_enabled() -> bool:
    """Whether direct chunk I/O is on: the environment variable ``CUBEPIPE_DIRECT_IO``
    (``0``/``false``/``no``/``off`` turns it off, and every chunk goes through
    zarr-python; unset, ``1``/``true``/``yes``/``on``: on).

    Raises
    ------
    InputError
        Any other value.
    """
    value = os.environ.get("CUBEPIPE_DIRECT_IO", "").strip().lower()
    if value in ("", "1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    from .errors import InputError  # noqa: PLC0415

    raise InputError(
        f"CUBEPIPE_DIRECT_IO={value!r}: expected 0 (off: all chunk I/O through zarr-python) "
        "or 1 (on, the default)"
    )


def direct_layout(array_dir: str | Path, *, strict: bool = False) -> ChunkLayout | None:
    """The :class:`ChunkLayout` of the zarr v3 array in ``array_dir`` if its chunks can be
    read and written directly (see the module docs), else ``None`` (also when
    ``CUBEPIPE_DIRECT_IO=0``, see :func:`direct_io_enabled`). ``strict``: reading a
    missing chunk is an error (for a store marked complete)."""
    if not direct_io_enabled():
        return None
    try:
        meta = json.loads((Path(array_dir) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    try:
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            return None
        if meta.get("storage_transformers") or meta["data_type"] not in _DTYPES:
            return None
        grid, keys = meta["chunk_grid"], meta["chunk_key_encoding"]
        if grid["name"] != "regular" or keys["name"] != "default":
            return None
        codecs = meta["codecs"]
        names = [c["name"] for c in codecs]
        crc = names[-1:] == ["crc32c"]
        if crc:
            names = names[:-1]
        if names not in (["bytes", "zstd"], ["bytes", "blosc"]) or (
            names[1] == "blosc" and not crc  # blosc has no checksum of its own
        ):
            return None
        endian = (codecs[0].get("configuration") or {}).get("endian", _NATIVE)
        dtype = np.dtype(meta["data_type"])
        if dtype.itemsize > 1 and endian != _NATIVE:
            return None
        cfg = codecs[1].get("configuration") or {}
        if names[1] == "blosc":
            codec_kw = _blosc_config(cfg)
            if codec_kw is None:
                return None
        else:
            codec_kw = {
                "level": int(cfg.get("level", 0)),
                "checksum": bool(cfg.get("checksum", False)),
            }
        fill = meta["fill_value"]
        if isinstance(fill, str):  # "NaN", "Infinity", "-Infinity" for floats
            fill = float(fill)
        return ChunkLayout(
            root=str(Path(array_dir)),
            shape=tuple(int(s) for s in meta["shape"]),
            chunks=tuple(int(c) for c in grid["configuration"]["chunk_shape"]),
            dtype=dtype,
            fill_value=dtype.type(fill),
            separator=(keys.get("configuration") or {}).get("separator", "/"),
            strict=strict,
            codec=names[1],
            crc32c=crc,
            **codec_kw,
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return None


_SHUFFLES = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}


def _blosc_config(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """ChunkLayout's fields for a v3 ``blosc`` codec configuration, or None for one that
    is not fully stated (zarr-python writes every key) or names an unknown compressor."""
    from numcodecs.blosc import list_compressors  # noqa: PLC0415

    if set(cfg) != {"typesize", "cname", "clevel", "shuffle", "blocksize"}:
        return None
    if cfg["cname"] not in list_compressors() or cfg["shuffle"] not in _SHUFFLES:
        return None
    return {
        "level": int(cfg["clevel"]),
        "checksum": False,
        "cname": str(cfg["cname"]),
        "shuffle": _SHUFFLES[cfg["shuffle"]],
        "typesize": int(cfg["typesize"]),
        "blocksize": int(cfg["blocksize"]),
    }


def largest_chunk(array_dirs: list[str | Path]) -> int:
    """Bytes of the largest chunk among the direct-I/O arrays in ``array_dirs`` (0 if
    none): what one dask task holds of them."""
    sizes = [
        math.prod(lay.chunks) * lay.dtype.itemsize
        for lay in map(direct_layout, array_dirs)
        if lay is not None
    ]
    return max(sizes, default=0)


class KeptChunks:
    """Decoded chunks kept from one pass over a store for the next, up to ``budget`` bytes.

    The first read of a chunk offers it (kept while the budget allows); the next read
    takes it out again, so each kept chunk saves exactly one decode and the memory is
    returned as the second pass goes. Thread-safe; in another process (a distributed
    worker) it unpickles empty with no budget, so nothing is kept there.
    """

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self.used = 0
        self.hits = 0
        self._chunks: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (KeptChunks, (0,))

    def take(self, key: tuple[str, tuple[int, ...]]) -> np.ndarray | None:
        with self._lock:
            chunk = self._chunks.pop(key, None)
            if chunk is not None:
                self.used -= chunk.nbytes
                self.hits += 1
            return chunk

    def offer(self, key: tuple[str, tuple[int, ...]], chunk: np.ndarray) -> None:
        with self._lock:
            if key in self._chunks or self.used + chunk.nbytes > self.budget:
                return
            chunk.flags.writeable = False
            self._chunks[key] = chunk
            self.used += chunk.nbytes


class DirectChunkArray:
    """A read-only array-like over a :class:`ChunkLayout` for ``dask.array.from_array``.

    Indexing with one chunk's slices (what dask does for each block of an array chunked
    as on disk) reads that chunk's file and nothing else (or takes it from ``kept``);
    any other basic slice gathers the chunks it overlaps.
    """

    def __init__(self, layout: ChunkLayout, kept: KeptChunks | None = None) -> None:
        self.layout = layout
        self.kept = kept if kept is not None and kept.budget > 0 else None
        self.shape = layout.shape
        self.dtype = layout.dtype
        self.ndim = len(layout.shape)

    def _chunk(self, idx: tuple[int, ...]) -> np.ndarray:
        if self.kept is None:
            return self.layout.read_chunk(idx)
        key = (self.layout.root, idx)
        chunk = self.kept.take(key)
        if chunk is None:
            chunk = self.layout.read_chunk(idx)
            self.kept.offer(key, chunk)
        return chunk

    def __getitem__(self, key: Any) -> np.ndarray:
        lay = self.layout
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim or not all(isinstance(k, slice) for k in key):
            return self[(slice(None),) * self.ndim][key]  # fancy/int indexing: rare
        spans = [k.indices(n) for k, n in zip(key, self.shape, strict=True)]
        if any(step != 1 for _, _, step in spans):
            whole = self[tuple(slice(a, b) for a, b, _ in spans)]
            return whole[tuple(slice(None, None, step) for _, _, step in spans)]
        ranges = [
            range(a // c, (b - 1) // c + 1) if b > a else range(0)
            for (a, b, _), c in zip(spans, lay.chunks, strict=True)
        ]
        out_shape = tuple(max(b - a, 0) for a, b, _ in spans)
        if len(ranges) and all(len(r) == 1 for r in ranges):
            idx = tuple(r[0] for r in ranges)
            starts = tuple(i * c for i, c in zip(idx, lay.chunks, strict=True))
            if all(a == s for (a, _, _), s in zip(spans, starts, strict=True)) and (
                out_shape == lay.block_shape(idx)
            ):
                return self._chunk(idx)
        out = np.empty(out_shape, dtype=self.dtype)
        for idx in np.ndindex(*(len(r) for r in ranges)):
            cidx = tuple(r[i] for r, i in zip(ranges, idx, strict=True))
            block = lay.read_chunk(cidx)
            src, dst = [], []
            for (a, b, _), i, c, n in zip(spans, cidx, lay.chunks, block.shape, strict=True):
                lo, hi = max(a, i * c), min(b, i * c + n)
                src.append(slice(lo - i * c, hi - i * c))
                dst.append(slice(lo - a, hi - a))
            out[tuple(dst)] = block[tuple(src)]
        return out
