"""Dimension names and chunking rules of the cube store contract (see DESIGN.md)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any, TypeVar

from .errors import InputError

__all__ = [
    "CORE_DIMS",
    "LEADING_DIMS",
    "DEFAULT_CHUNK_YX",
    "MAX_CHUNK_BYTES",
    "MAX_SHARD_BYTES",
    "SHARD_TARGET_BYTES",
    "default_chunks",
    "parse_chunks",
    "parse_shards",
    "shard_shape",
]

#: The last three dims of every cube variable, in this order.
CORE_DIMS = ("band", "y", "x")
#: The one extra leading dim an image data set or a video may carry.
LEADING_DIMS = ("image", "frame")
DEFAULT_CHUNK_YX = 512
#: No single chunk may hold more than this many bytes (in memory, before compression).
MAX_CHUNK_BYTES = 128 * 2**20

#: A shard is written from memory whole (one dask task per shard): at most this much.
MAX_SHARD_BYTES = 1024 * 2**20
#: ``--shards auto``: about this much per shard (uncompressed), along image/frame.
SHARD_TARGET_BYTES = 256 * 2**20
#: Without ``--shards``, an image/frame variable of at least this many chunks is sharded
#: as ``auto`` would (a data set of 100,000 images should not be 100,000 files).
AUTO_SHARD_MIN_CHUNKS = 4096

#: A dim name: ``str`` for cubepipe's own dims, any hashable in an xarray ``sizes`` mapping.
_Dim = TypeVar("_Dim", bound=Hashable)


def default_chunks(
    sizes: Mapping[_Dim, int],
    itemsize: int,
    *,
    yx: int = DEFAULT_CHUNK_YX,
    # Any key: a lookup by dim name, and ``Mapping`` is invariant in its key type, so a
    # ``dict[str, int]`` (from ``--chunks``) must fit as well as xarray's Hashable keys.
    overrides: Mapping[Any, int] | None = None,
) -> dict[_Dim, int]:
    """Chunk sizes for a variable with the given dim sizes.

    ``band`` and any other dim (``component``, ...) stay whole, ``y``/``x`` get ``yx``
    (512), the leading dims of collections (``image``, ``frame``) get 1, then ``y``/``x``
    are halved until one chunk is at most :data:`MAX_CHUNK_BYTES`. ``overrides`` (e.g.
    from ``--chunks y=256,x=256``) win.
    """
    overrides = dict(overrides or {})
    chunks: dict[_Dim, int] = {}
    for dim, n in sizes.items():
        if dim in overrides:
            chunks[dim] = min(int(overrides[dim]), n) if n else 1
        elif dim in ("y", "x"):
            chunks[dim] = min(yx, n)
        elif dim in LEADING_DIMS:
            chunks[dim] = 1
        else:
            chunks[dim] = n
        chunks[dim] = max(chunks[dim], 1)
    while math.prod(int(c) for c in chunks.values()) * itemsize > MAX_CHUNK_BYTES:
        shrinkable = [d for d in chunks if d in ("y", "x") and d not in overrides and chunks[d] > 1]
        if not shrinkable:
            break
        for d in shrinkable:
            chunks[d] = max(1, chunks[d] // 2)
    return chunks


def parse_chunks(spec: str | None) -> dict[str, int]:
    """Parse a ``--chunks`` value such as ``y=512,x=512`` into ``{"y": 512, "x": 512}``."""
    if not spec:
        return {}
    out: dict[str, int] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            size = int(value)
        except ValueError:
            size = 0
        if not sep or not name or size < 1:
            raise InputError(
                f"--chunks expects DIM=SIZE pairs such as y=512,x=512; got {spec!r} "
                f"(bad part {part!r})"
            )
        out[name] = size
    return out


def shard_shape(
    sizes: Mapping[Any, int],
    chunks: Mapping[Any, int],
    itemsize: int,
    shards: Mapping[Any, int] | str | None,
) -> dict[Any, int] | None:
    """The shard shape (per dim, a whole number of chunks) for ``shards``, or None.

    ``None`` (the default): ``"auto"`` for a variable with a leading ``image``/``frame``
    dim of at least :data:`AUTO_SHARD_MIN_CHUNKS` chunks, else no sharding. ``{}`` or
    ``"none"`` (``--shards none``): no sharding, one file per chunk. A mapping (``--shards y=4096``):
    each named dim gets that size rounded up to whole chunks (and at most the dim, in
    whole chunks); other dims one chunk. ``"auto"``: along a leading ``image``/``frame``
    dim as many chunks as fit in :data:`SHARD_TARGET_BYTES` (a video of small frames
    becomes a few hundred files, not millions); no sharding without such a dim.

    Raises
    ------
    InputError
        An unknown dim, a size below 1, or a shard above :data:`MAX_SHARD_BYTES` (a shard
        is encoded in memory whole).
    """
    if shards is None:
        n_chunks = math.prod(-(-int(sizes[d]) // int(c)) for d, c in chunks.items())
        if not any(d in LEADING_DIMS for d in sizes) or n_chunks < AUTO_SHARD_MIN_CHUNKS:
            return None
        shards = "auto"
    if not shards or shards == "none":
        return None
    out = {d: int(c) for d, c in chunks.items()}
    if shards == "auto":
        lead = [d for d in sizes if d in LEADING_DIMS]
        if not lead:
            return None
        chunk_bytes = math.prod(out.values()) * itemsize
        per = max(1, SHARD_TARGET_BYTES // max(chunk_bytes, 1))
        d = lead[0]
        out[d] = min(out[d] * per, -(-sizes[d] // out[d]) * out[d])
    elif isinstance(shards, str):
        raise InputError(
            f"--shards: expected 'auto', 'none' or sizes such as y=4096,x=4096; got {shards!r}"
        )
    else:
        for d, n in shards.items():
            if d not in sizes:
                raise InputError(f"--shards: no dim {d!r} here; dims: {', '.join(map(str, sizes))}")
            if int(n) < 1:
                raise InputError(f"--shards: {d}={n} must be at least 1")
            c = out[d]
            out[d] = min(-(-int(n) // c) * c, -(-sizes[d] // c) * c)
    if out == {d: int(c) for d, c in chunks.items()}:
        return None  # one chunk per shard: nothing gained
    nbytes = math.prod(out.values()) * itemsize
    if nbytes > MAX_SHARD_BYTES:
        raise InputError(
            f"--shards: one shard of {', '.join(f'{d}={n}' for d, n in out.items())} holds "
            f"{nbytes / 2**20:.0f} MiB; a shard is encoded in memory whole, so at most "
            f"{MAX_SHARD_BYTES // 2**20} MiB: choose smaller shards"
        )
    return out


def parse_shards(spec: str | None) -> dict[str, int] | str | None:
    """A ``--shards`` value: ``auto``, ``none``, or sizes like ``--chunks``
    (``y=4096,x=4096``); None (not given) for the default."""
    if spec is None or not spec.strip():
        return None
    if spec.strip().lower() in ("auto", "none"):
        return spec.strip().lower()
    try:
        return parse_chunks(spec)
    except InputError as exc:
        raise InputError(f"--shards: {exc} (or 'auto', 'none')") from None
