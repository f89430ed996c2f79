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
    "default_chunks",
    "parse_chunks",
]

#: The last three dims of every cube variable, in this order.
CORE_DIMS = ("band", "y", "x")
#: The one extra leading dim an image data set or a video may carry.
LEADING_DIMS = ("image", "frame")
DEFAULT_CHUNK_YX = 512
#: No single chunk may hold more than this many bytes (in memory, before compression).
MAX_CHUNK_BYTES = 128 * 2**20

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
