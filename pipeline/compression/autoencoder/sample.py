"""A bounded, reproducible random sample of valid pixels, drawn in one streaming pass.

Every pixel gets a pseudo-random key in [0, 1) from a counter-based hash (SplitMix64) of
its position in the cube and the seed; the sample is the ``n`` valid pixels with the
smallest keys ("bottom-k" or priority sampling). Each chunk keeps its own ``n`` smallest,
and partials merge pairwise in a tree keeping the ``n`` smallest again, so the result is a
uniform sample without replacement of the valid pixels, the same for a seed whatever the
chunking, and memory holds a few partials of at most ``min(n, chunk)`` pixels each,
whatever the cube's size.

The sample comes back ordered by key, i.e. in random order: its first rows can be held out
for validation without another shuffle.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

__all__ = ["pixel_keys", "sample_pixels"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_FAN_IN = 2  # partials merged at a time: each holds up to n pixels, so keep few alive


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def pixel_keys(index: np.ndarray, seed: int) -> np.ndarray:
    """Keys in [0, 1) (float64, 53 random bits) of pixels at flat positions ``index``."""
    s = _mix(np.array([seed & _MASK], dtype=np.uint64))[0]
    z = (index.astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN) + s
    return (_mix(z) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _block_sample(
    block: Any,
    valid: Any,
    *,
    start: tuple[int, ...],
    shape: tuple[int, ...],
    band_axis: int,
    n: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys, index, values (m, band))`` of the ``m <= n`` smallest-key valid pixels."""
    x = _host(block)
    nb = x.shape[band_axis]
    rows = np.moveaxis(x, band_axis, 0).reshape(nb, -1)
    bad = np.isnan(rows) if rows.dtype.kind == "f" else np.zeros(rows.shape, bool)
    if valid is not None:
        bad |= ~np.moveaxis(_host(valid), band_axis, 0).reshape(nb, -1).astype(bool)
    ok = ~bad.any(axis=0)
    pix_shape = tuple(s for i, s in enumerate(x.shape) if i != band_axis)
    pix_start = [o for i, o in enumerate(start) if i != band_axis]
    glob_shape = tuple(s for i, s in enumerate(shape) if i != band_axis)
    local = np.nonzero(ok.reshape(pix_shape))
    index = np.ravel_multi_index(
        tuple(a + o for a, o in zip(local, pix_start, strict=True)), glob_shape
    ).astype(np.int64)
    keys = pixel_keys(index, seed)
    cols = np.flatnonzero(ok)
    if keys.size > n:
        keep = np.argpartition(keys, n - 1)[:n]
        keys, index, cols = keys[keep], index[keep], cols[keep]
    return keys, index, np.ascontiguousarray(rows[:, cols].T)


def _merge(*parts: tuple[np.ndarray, np.ndarray, np.ndarray], n: int, final: bool = False):
    keys = np.concatenate([p[0] for p in parts])
    index = np.concatenate([p[1] for p in parts])
    values = np.concatenate([p[2] for p in parts])
    if keys.size > n:
        keep = np.argpartition(keys, n - 1)[:n]
        keys, index, values = keys[keep], index[keep], values[keep]
    if final:
        order = np.lexsort((index, keys))
        keys, index, values = keys[order], index[order], values[order]
    return keys, index, values


def sample_pixels(
    data: da.Array, valid: da.Array | None, *, band_axis: int, n: int, seed: int
) -> Any:
    """Lazy (``dask.delayed``) sample of at most ``n`` pixels of ``data`` valid in every
    band (not NaN, ``valid`` True).

    Parameters
    ----------
    data
        ``(..., band, y, x)`` with the band axis in one chunk (``valid`` chunked alike).
    n, seed
        Sample size and seed; the sample depends on nothing else (not on chunking).

    Returns
    -------
    dask.delayed.Delayed
        Computes to ``(keys (m,), index (m,), values (m, band))``, ``m = min(n, valid
        pixels)``, in ascending key order (a random order); ``index`` is each pixel's flat
        position over the non-band dims; ``values`` keep the input dtype. Compute it
        together with other reductions of ``data`` to share the reads.
    """
    if len(data.chunks[band_axis]) != 1:
        raise ValueError("sample_pixels needs the band axis in one chunk")
    token = tokenize(data.name, None if valid is None else valid.name, band_axis, n, seed)
    name = f"cubepipe-compress-sample-{token}"
    # Unoptimised, so the blocks keep the keys other reductions of ``data`` use (one read).
    blocks = data.to_delayed(optimize_graph=False)
    vblocks = valid.to_delayed(optimize_graph=False) if valid is not None else None
    offsets = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in data.chunks]
    step = dask.delayed(_block_sample, pure=True)
    parts = []
    for i, idx in enumerate(np.ndindex(*data.numblocks)):
        start = tuple(int(offsets[a][j]) for a, j in enumerate(idx))
        parts.append(
            step(
                blocks[idx],
                None if vblocks is None else vblocks[idx],
                start=start,
                shape=data.shape,
                band_axis=band_axis,
                n=n,
                seed=seed,
                dask_key_name=f"{name}-partial-{i}",
            )
        )
    merge = dask.delayed(_merge, pure=True)
    level = 0
    while len(parts) > 1 or level == 0:
        final = len(parts) <= _FAN_IN
        parts = [
            merge(
                *parts[j : j + _FAN_IN],
                n=n,
                final=final,
                dask_key_name=f"{name}-aggregate-{level}-{j // _FAN_IN}",
            )
            for j in range(0, len(parts), _FAN_IN)
        ]
        level += 1
    return parts[0]
