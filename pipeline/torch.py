"""A PyTorch map-style Dataset over a cube store (the ``torch`` extra).

:class:`CubeDataset` serves one float32 tensor ``(C, H, W)`` (band first) per image or
video frame of a store, or per spatial patch, optionally standardized on the fly with the
statistics a ``cubepipe stats`` run saved (the same float64 arithmetic as ``cubepipe
standardize``, so a sample equals the standardized store's values bit for bit).

DataLoader workers
------------------
A DataLoader forks (or spawns) worker processes. A process that computed anything with
dask's threaded scheduler holds a thread pool; a forked child inherits the pool object but
not its threads, so a dask computation in the child queues its tasks for threads that do
not exist and waits forever (the worker "hangs"; ``DataLoader(timeout=...)`` turns it into
an error). :class:`CubeDataset` is safe under both start methods because:

- what it pickles is the path, the options and the per-band ``center``/``scale`` arrays:
  never an open store, dask graph or xarray object (``__getstate__`` drops them);
- each process opens the store itself, on its first sample, through
  :func:`cubepipe.storage.open_cube` (the opened store is keyed by process id, so a forked
  child that inherited the parent's reopens rather than reuse it);
- every read runs with dask's synchronous scheduler, in the calling thread: no thread pool
  is created or used, in the parent or in a worker.

Reading
-------
A chunk is the smallest thing a store can decode, and a patch is usually much smaller than
one (64 x 64 in a 512 x 512 chunk). So each process keeps the chunks it decoded last, up
to ``cache_bytes``, and patches are numbered chunk by chunk: a DataLoader that reads the
samples in order (no shuffling, or shuffling chunk-sized runs of indices) decodes each
chunk about once per worker, instead of once per patch.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import dask
import numpy as np
import xarray as xr

from cubepipe.pipeline.stats.fit import STAT_VARS, stats_from_json, take_stats
from cubepipe.pipeline.stats.standardize import (
    METHOD_ATTR,
    METHODS,
    _affine,  # the exact kernel `standardize` maps over chunks: identical results
    transform_params,
)
from cubepipe.storage import open_cube, storage_options
from cubepipe.storage.errors import InputError, InvalidStoreError, MissingDependencyError
from cubepipe.storage.layout import CORE_DIMS, LEADING_DIMS, MAX_CHUNK_BYTES
from cubepipe.storage.location import is_remote, local_path, options_for

try:
    import torch
    from torch.utils.data import Dataset
except ImportError as exc:  # the module is the torch entry point: it needs torch
    raise MissingDependencyError(
        "cubepipe.pipeline.torch (a PyTorch Dataset over a cube store)", "torch", "torch"
    ) from exc

__all__ = ["EDGES", "CubeDataset", "Window"]

#: How patches meet the right/bottom edge: ``pad`` adds windows reaching past the edge
#: (the part outside the cube is invalid); ``drop`` keeps whole windows only.
EDGES = ("pad", "drop")


class Window(NamedTuple):
    """Where sample ``i`` comes from: ``item``, the ``image``/``frame`` index (None for a
    ``(band, y, x)`` cube) and the rows/columns of the cube it holds. A padded patch
    holds them in its top-left ``(y.stop - y.start, x.stop - x.start)`` corner."""

    item: int | None
    y: slice
    x: slice


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    v = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(v) != 2 or not all(isinstance(n, int | np.integer) and n > 0 for n in v):
        raise InputError(f"{name} must be a positive int or (h, w) of positive ints; got {value!r}")
    return int(v[0]), int(v[1])


def _bounds(s: slice) -> tuple[int, int]:
    return int(s.start), int(s.stop)


def _mask_index(at: tuple[Any, ...], has: tuple[bool, ...]) -> tuple[Any, ...]:
    """``at`` (an index of the data) for the mask, which has size 1 in the dims it lacks."""
    return tuple(
        a if h else 0 if isinstance(a, int) else slice(0, 1) for a, h in zip(at, has, strict=True)
    )


@dataclass(frozen=True)
class _Axis:
    """The window starts along ``y`` or ``x`` (``i * stride``, ``i < n``), and which of
    them start in each storage chunk (``first[c]``, ``count[c]``: starts are in order, so
    ``first`` is also the number of starts before chunk ``c``)."""

    size: int
    patch: int
    stride: int
    edges: np.ndarray  # chunk boundaries, 0 ... size
    n: int
    first: np.ndarray
    count: np.ndarray

    @classmethod
    def make(cls, size: int, patch: int, stride: int, edge: str, chunks: Sequence[int]) -> _Axis:
        last = size - patch  # the last start of a window wholly inside
        if edge == "pad":  # until the last row is inside a window; never a start outside
            n = min(-(-last // stride), (size - 1) // stride) + 1
        else:
            n = last // stride + 1
        edges = np.concatenate([[0], np.cumsum(chunks)]).astype(np.int64)
        lo = np.minimum(-(-edges[:-1] // stride), n)
        hi = np.minimum(-(-edges[1:] // stride), n)
        return cls(size, patch, stride, edges, n, lo, hi - lo)

    def aligned(self, start: int, stop: int) -> tuple[int, int]:
        """The chunk boundaries around rows ``start:stop``."""
        e = self.edges
        return int(e[np.searchsorted(e, start, side="right") - 1]), int(
            e[np.searchsorted(e, stop, side="left")]
        )


class CubeDataset(Dataset["torch.Tensor"]):
    """Samples of a cube store as float32 tensors ``(C, H, W)``, for a DataLoader.

    Parameters
    ----------
    store
        Path (or object storage URL) of a cube store whose ``variable`` has dims
        ``(band, y, x)`` or ``(image|frame, band, y, x)``. Opened with
        :func:`~cubepipe.storage.open_cube`: an incomplete store is refused.
    variable
        The data variable to serve.
    patch
        None: one sample per image/frame (a ``(band, y, x)`` cube is one sample).
        ``(h, w)`` (or one int): samples are spatial windows of that size, per
        image/frame, numbered storage chunk by storage chunk (row-major over the chunks,
        then over the windows starting in each; :meth:`window` says where sample ``i``
        is). A patch larger than the cube is refused.
    stride
        Step between windows, ``(sy, sx)`` or one int; default ``patch`` (tiles that
        cover each image once).
    edge
        ``"pad"`` (default): windows continue until the cube's last row/column is
        covered; the part of a window outside the cube is invalid (see ``fill``), so
        with ``stride == patch`` every pixel is in exactly one sample. ``"drop"``: only
        windows wholly inside the cube; the remainder at the right/bottom is not served.
    standardize
        None: values as stored. ``"zscore"`` or ``"minmax"``: standardized per band with
        ``stats`` exactly as ``cubepipe standardize`` does (float64 arithmetic, float32
        result). A store whose data are already standardized is refused.
    stats
        Where the statistics come from: None (the ``stats_*`` variables saved in
        ``store`` by ``cubepipe stats``), another store's path, a JSON file from
        ``cubepipe stats --json``, or a Dataset of ``stats_*`` variables.
    fill
        Invalid values are NaN in the data or False in the store's ``mask`` variable
        (and the outside of a padded patch). None (default): they are NaN in the sample.
        A number: they are replaced by it (after standardization, so ``0.0`` is the band
        mean under ``zscore``).
    mask_channel
        Append one channel, 1.0 where every band of the pixel is valid and 0.0 elsewhere,
        so ``C`` is the band count plus one.
    allow_incomplete
        Read a store whose writer has not finished (unwritten chunks read as NaN).
    cache_bytes
        Decoded chunks each process keeps for the next samples (see the module
        docstring); 0 keeps none. The default holds one chunk of the largest size the
        store contract allows (128 MiB), per DataLoader worker.

    Notes
    -----
    Samples are float32 whatever the stored dtype (a float64 store is rounded to
    float32). Standardization is ``(x - center) / scale`` per band in float64, with
    ``center, scale`` from :func:`~cubepipe.pipeline.stats.transform_params` (``mean,
    std`` for z-score, ``min, max - min`` for min-max; zero-spread bands get scale 1 and
    a warning).

    Safe in DataLoader worker processes with the ``fork`` and ``spawn`` start methods,
    also after the parent process has read the store: see the module docstring.

    Examples
    --------
    >>> ds = CubeDataset("scene.zarr", patch=64, standardize="zscore", fill=0.0)  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2)  # doctest: +SKIP
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        *,
        variable: str = "cube",
        patch: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
        edge: str = "pad",
        standardize: str | None = None,
        stats: xr.Dataset | str | os.PathLike[str] | None = None,
        fill: float | None = None,
        mask_channel: bool = False,
        allow_incomplete: bool = False,
        cache_bytes: int = MAX_CHUNK_BYTES,
    ) -> None:
        # Absolute: a spawned worker may not share this process's working directory.
        local = None if is_remote(store) else local_path(store, "a store")
        self.store = str(store) if local is None else os.path.abspath(local)
        # Object storage: the options in force now go with the Dataset to spawned workers.
        self._storage_options = options_for(self.store) if local is None else {}
        self.variable = variable
        self.allow_incomplete = allow_incomplete
        self.fill = None if fill is None else float(fill)
        self.mask_channel = bool(mask_channel)
        self.standardize = standardize
        self.cache_bytes = int(cache_bytes)
        self._ds: xr.Dataset | None = None
        self._pid: int | None = None
        self._cache: OrderedDict[tuple[Any, ...], tuple[np.ndarray, np.ndarray | None]]
        self._cache = OrderedDict()
        ds = self._open()
        cube = self._cube(ds)
        self.lead: str | None = str(cube.dims[0]) if cube.ndim == 4 else None
        self.shape = tuple(int(n) for n in cube.shape)
        self.bands = cube.sizes["band"]
        self._mask_dims: tuple[bool, ...] = ()
        if "mask" in ds and variable != "mask":
            mask_dims = set(map(str, ds["mask"].dims))
            if not mask_dims <= set(map(str, cube.dims)):
                raise InputError(
                    f"the mask of {self.store} has dims {ds['mask'].dims}, not a subset of "
                    f"{variable!r}'s {cube.dims}"
                )
            self._mask_dims = tuple(str(d) in mask_dims for d in cube.dims)
        ny, nx = cube.sizes["y"], cube.sizes["x"]
        if edge not in EDGES:
            raise InputError(f"unknown edge {edge!r}; expected one of {', '.join(EDGES)}")
        self.edge = edge
        if patch is None:
            if stride is not None:
                raise InputError(
                    "stride needs patch=(h, w): without a patch a sample is a whole image"
                )
            self.patch = self.stride = (ny, nx)
        else:
            self.patch = _pair(patch, "patch")
            self.stride = self.patch if stride is None else _pair(stride, "stride")
            if self.patch[0] > ny or self.patch[1] > nx:
                raise InputError(
                    f"patch {self.patch} is larger than the cube's (y, x) = ({ny}, {nx}) in "
                    f"{self.store}; use a patch of at most ({ny}, {nx}), or patch=None for "
                    "whole images"
                )
        chunks = dict(zip(cube.dims, cube.chunks or [(n,) for n in cube.shape], strict=True))
        self._y = _Axis.make(ny, self.patch[0], self.stride[0], edge, chunks["y"])
        self._x = _Axis.make(nx, self.patch[1], self.stride[1], edge, chunks["x"])
        self._lead = (
            _Axis.make(self.shape[0], 1, 1, "drop", chunks[self.lead]) if self.lead else None
        )
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        if standardize is not None:
            self.center, self.scale = self._params(ds, cube, standardize, stats)
        elif stats is not None:
            raise InputError("stats are used only to standardize: pass standardize='zscore'")

    # -- opening, per process ---------------------------------------------------------

    def _open(self) -> xr.Dataset:
        """The store opened in this process (reopened after a fork: never the parent's)."""
        if self._ds is None or self._pid != os.getpid():
            with storage_options(**self._storage_options):
                ds = open_cube(self.store, allow_incomplete=self.allow_incomplete)
            shape = getattr(self, "shape", None)  # None while __init__ first opens it
            if shape is not None and tuple(ds[self.variable].shape) != shape:
                raise InvalidStoreError(
                    f"{self.store} changed after the Dataset was made: {self.variable!r} is "
                    f"{ds[self.variable].shape}, was {shape}; make a new CubeDataset"
                )
            self._ds, self._pid, self._cache = ds, os.getpid(), OrderedDict()
        return self._ds

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # No open store, dask graph, xarray object or decoded chunk crosses processes.
        state.update(_ds=None, _pid=None, _cache=OrderedDict())
        return state

    def _cube(self, ds: xr.Dataset) -> xr.DataArray:
        if self.variable not in ds:
            raise InputError(
                f"no variable {self.variable!r} in {self.store} (it has "
                f"{', '.join(map(str, ds.data_vars))}); pass variable=NAME"
            )
        cube = ds[self.variable]
        dims = tuple(map(str, cube.dims))
        if (
            dims[-3:] != CORE_DIMS
            or len(dims) not in (3, 4)
            or dims[:-3] not in [(), *((d,) for d in LEADING_DIMS)]
        ):
            raise InputError(
                f"{self.variable!r} in {self.store} has dims {dims}; CubeDataset serves "
                "(band, y, x) cubes and (image, band, y, x) or (frame, band, y, x) stacks"
            )
        return cube

    def _params(
        self, ds: xr.Dataset, cube: xr.DataArray, method: str, stats: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        if method not in METHODS:
            raise InputError(
                f"unknown standardize {method!r}; expected one of {', '.join(METHODS)}"
            )
        done = cube.attrs.get(METHOD_ATTR)
        if done is not None:
            raise InputError(
                f"{self.store} holds data already standardized ({done}); read it as stored "
                "(standardize=None), or standardize the original store"
            )
        if stats is None:
            if not all(v in ds for v in STAT_VARS):
                raise InputError(
                    f"standardize={method!r} needs the statistics that `cubepipe stats "
                    f"{self.store}` saves (stats_* variables), and {self.store} has none; run "
                    "it first, or pass stats=STORE_OR_JSON"
                )
            source = take_stats(ds)
        elif isinstance(stats, xr.Dataset):
            source = take_stats(stats)
        elif Path(stats).is_file():
            source = stats_from_json(stats)
        else:
            source = take_stats(open_cube(stats))
        if source.sizes["band"] != cube.sizes["band"]:
            raise InputError(
                f"statistics have {source.sizes['band']} bands but {self.variable!r} in "
                f"{self.store} has {cube.sizes['band']}"
            )
        return transform_params(source.compute(scheduler="synchronous"), method)

    # -- samples ------------------------------------------------------------------------

    def __len__(self) -> int:
        return (self._lead.n if self._lead else 1) * self._y.n * self._x.n

    @property
    def channels(self) -> int:
        """``C`` of every sample: the bands, plus one with ``mask_channel``."""
        return self.bands + int(self.mask_channel)

    def window(self, i: int) -> Window:
        """Where sample ``i`` comes from (see :class:`Window`)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} of a CubeDataset of {n}")
        ay, ax = self._y, self._x
        k, j = divmod(i % n, ay.n * ax.n)
        # Chunk row, then chunk column, then the windows starting in that chunk row-major.
        # (Among chunks with equal ``first``, the last is the one holding the windows.)
        cy = int(np.searchsorted(ay.first * ax.n, j, side="right")) - 1
        r, rows = j - int(ay.first[cy]) * ax.n, int(ay.count[cy])
        cx = int(np.searchsorted(ax.first * rows, r, side="right")) - 1
        dy, dx = divmod(r - int(ax.first[cx]) * rows, int(ax.count[cx]))
        y0 = (int(ay.first[cy]) + dy) * ay.stride
        x0 = (int(ax.first[cx]) + dx) * ax.stride
        return Window(
            k if self.lead else None,
            slice(y0, min(y0 + ay.patch, ay.size)),
            slice(x0, min(x0 + ax.patch, ax.size)),
        )

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.sample(i))

    def sample(self, i: int) -> np.ndarray:
        """Sample ``i`` as a NumPy float32 array ``(C, H, W)`` (what ``ds[i]`` wraps)."""
        where = self.window(i)
        (k0, y0, x0), block, valid = self._region(where)
        at: tuple[Any, ...] = (
            slice(None),
            slice(where.y.start - y0, where.y.stop - y0),
            slice(where.x.start - x0, where.x.stop - x0),
        )
        if self.lead:
            at = (int(where.item or 0) - k0, *at)
        data = block[at]
        if self.center is not None:
            values = _affine(
                data,
                center=self.center,
                scale=self.scale,
                band_axis=0,
                inverse=False,
                out_dtype=np.float32,
            )
        else:
            values = data.astype(np.float32)
        ok = ~np.isnan(values)
        if valid is not None:  # a dim the mask lacks has size 1 there: broadcast it
            ok &= valid[_mask_index(at, self._mask_dims)]
        blank = np.float32(np.nan if self.fill is None else self.fill)
        h, w = self.patch
        hy, hx = values.shape[1:]
        out = np.full((self.channels, h, w), blank, dtype=np.float32)
        out[: self.bands, :hy, :hx] = np.where(ok, values, blank)
        if self.mask_channel:
            out[-1] = 0.0
            out[-1, :hy, :hx] = ok.all(axis=0)
        return out

    def _region(self, where: Window) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray | None]:
        """The whole chunks holding ``where`` (their origin, the data, the mask broadcast
        to the data's dims), from this process's cache or decoded now."""
        y0, y1 = self._y.aligned(where.y.start, where.y.stop)
        x0, x1 = self._x.aligned(where.x.start, where.x.stop)
        k0, k1 = (0, 1)
        if self._lead is not None:
            k0, k1 = self._lead.aligned(int(where.item or 0), int(where.item or 0) + 1)
        key = (k0, k1, y0, y1, x0, x1)
        ds = self._open()
        hit = self._cache.pop(key, None)
        if hit is not None:
            self._cache[key] = hit  # the most recently used is last
            return (k0, y0, x0), *hit
        sel: dict[str, Any] = {"y": slice(y0, y1), "x": slice(x0, x1)}
        dims: tuple[str, ...] = CORE_DIMS
        if self.lead:
            sel[self.lead] = slice(k0, k1)
            dims = (self.lead, *CORE_DIMS)
        data = ds[self.variable].isel(sel).transpose(*dims).data
        mask = None
        if self._mask_dims:
            m = ds["mask"]
            m = m.isel({d: v for d, v in sel.items() if d in m.dims})
            mask = m.transpose(*[d for d in dims if d in m.dims]).data
        # In this thread, never dask's pool: a forked worker has no threads behind it.
        block, valid = dask.compute(data, mask, scheduler="synchronous")
        block = np.asarray(block)
        if valid is not None:
            shape = [n if has else 1 for n, has in zip(block.shape, self._mask_dims, strict=True)]
            valid = np.asarray(valid, dtype=bool).reshape(shape)
        itself = (k1 - k0, y0, y1, x0, x1) == (1, *_bounds(where.y), *_bounds(where.x))
        if not itself:  # a region that is the sample itself is never read again
            self._keep(key, block, valid)
        return (k0, y0, x0), block, valid

    def _keep(self, key: tuple[int, ...], block: np.ndarray, valid: np.ndarray | None) -> None:
        """Cache a decoded region, dropping the least recently used beyond the budget."""

        def size(b: np.ndarray, v: np.ndarray | None) -> int:
            return b.nbytes + (0 if v is None else v.nbytes)

        if size(block, valid) > self.cache_bytes:
            return
        self._cache[key] = (block, valid)
        while self._cache and sum(size(*e) for e in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)
