"""``filter_cube``: kernels, chunked with halos, over a cube Dataset, lazily."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.array.overlap import ensure_minimum_chunksize

from cubepipe.pipeline.cube import cube_and_valid
from cubepipe.storage.errors import InputError

from ..backend import Device, array_namespace, to_device
from .convolve import choose_method, convolve_block
from .kernels import Kernel, KernelSpec, make_kernel, parse_kernel
from .masked import normalized_block

__all__ = ["AXES", "FILTER_ATTR", "METHODS", "MODES", "filter_cube", "filter_dtype"]

AXES = {"spatial": ("y", "x"), "spectral": ("band",)}
#: ``fft`` is another name of ``rfft`` (the input is real, so the FFT path is always the
#: real one); reports and logs say ``rfft``.
METHODS = ("auto", "direct", "rfft", "fft")
#: Boundary modes, as scipy.ndimage names them: reflect ``d c b a | a b c d | d c b a``,
#: nearest ``a a a | a b c d | d d d``, constant ``0 0 0 | a b c d | 0 0 0``.
MODES = ("reflect", "nearest", "constant")
_NUMPY_PAD = {"reflect": "symmetric", "nearest": "edge", "constant": "constant"}
_DASK_BOUNDARY: dict[str, Any] = {"reflect": "reflect", "nearest": "nearest", "constant": 0}
#: Attr of the output variable recording what was done (kernel, method and why, ...).
FILTER_ATTR = "cubepipe_filter"


def filter_dtype(dtype: Any) -> np.dtype:
    """Output dtype: float64 stays float64, everything else becomes float32.

    Arithmetic is float64 whatever the input (one rounding, at the end)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


@dataclass(frozen=True, eq=False)
class _Plan:
    """Everything a block needs; built once per call, shared by every task."""

    kernel: Kernel
    method: str
    mode: str
    axes: tuple[int, ...]
    depth: tuple[int, ...]
    inside: tuple[bool, ...]  # pad inside the block (axis in one chunk) rather than dask
    masked: bool
    mask_nan: bool
    min_support: float
    fill: bool
    out_dtype: str

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (
            "cubepipe-filter-plan", self.kernel.digest, self.method, self.mode, self.axes,
            self.depth, self.inside, self.masked, self.mask_nan, self.min_support,
            self.fill, self.out_dtype,
        )  # fmt: skip

    @property
    def outside(self) -> float:
        """Value beyond the edges in ``constant`` mode: 0, or NaN (invalid) when masked."""
        return float("nan") if self.masked else 0.0

    def pad(self, a: Any, xp: Any, value: Any = 0) -> Any:
        widths = [(0, 0)] * a.ndim
        for ax, d, inside in zip(self.axes, self.depth, self.inside, strict=True):
            if inside:
                widths[ax] = (d, d)
        if all(w == (0, 0) for w in widths):
            return a
        if self.mode == "constant":
            return xp.pad(a, widths, mode="constant", constant_values=value)
        return xp.pad(a, widths, mode=_NUMPY_PAD[self.mode])


def _filter_block(x: Any, valid: Any = None, *, plan: _Plan) -> Any:
    xp = array_namespace(x)
    b = plan.pad(xp.astype(x, xp.float64), xp, plan.outside)
    if not plan.masked:
        out = convolve_block(
            b, plan.kernel.taps, axes=plan.axes, depth=plan.depth, method=plan.method
        )
    else:
        # asarray: a mask held in host memory meets data on the GPU here.
        w = None if valid is None else plan.pad(xp.asarray(valid), xp, False)
        if plan.mask_nan:
            finite = xp.isfinite(b)
            w = finite if w is None else (w & finite)
        out = normalized_block(
            b,
            w,
            plan.kernel,
            min_support=plan.min_support,
            fill=plan.fill,
            finite=plan.mask_nan,
            axes=plan.axes,
            depth=plan.depth,
            method=plan.method,
        )
    return xp.astype(out, plan.out_dtype)


def _fft_tile(n: int, longest: int) -> int:
    """Equal tiles of at most ``longest`` along an axis of length ``n``."""
    return -(-n // -(-n // max(longest, 1)))


def _halo_chunks(
    data: da.Array, axes: tuple[int, ...], depth: tuple[int, ...]
) -> tuple[dict[int, tuple[int, ...]], tuple[bool, ...]]:
    """Chunks along ``axes`` big enough for the halo, and which axes end up in one chunk
    (those are padded inside the block: dask cannot reflect a halo wider than the axis)."""
    new: dict[int, tuple[int, ...]] = {}
    inside = []
    for ax, d in zip(axes, depth, strict=True):
        chunks = data.chunks[ax]
        if len(chunks) > 1 and d > min(chunks):
            chunks = (sum(chunks),) if d >= sum(chunks) else ensure_minimum_chunksize(d, chunks)
            new[ax] = tuple(chunks)
        inside.append(len(chunks) == 1)
    return new, tuple(inside)


def _check(axis: str, method: str, mode: str, min_support: float) -> None:
    for name, value, allowed in (
        ("axis", axis, tuple(AXES)),
        ("method", method, METHODS),
        ("mode", mode, MODES),
    ):
        if value not in allowed:
            raise InputError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")
    if not 0 < min_support <= 1:
        raise InputError(f"min_support must be in (0, 1], got {min_support!r}")


def filter_cube(
    ds: xr.Dataset,
    kernel: str | KernelSpec,
    *,
    axis: str = "spatial",
    method: str = "auto",
    mode: str = "reflect",
    mask_nan: bool = False,
    min_support: float = 0.1,
    fill: bool = False,
    variable: str = "cube",
    fft_tile: int = 2048,
    device: Device | str | None = None,
) -> xr.Dataset:
    """Convolve every ``(y, x)`` plane (or every pixel's spectrum) of ``ds[variable]``.

    Parameters
    ----------
    ds
        Dataset with ``variable`` of dims ``(..., band, y, x)``, dask-backed (NumPy or
        CuPy chunks; the result stays on the same device), and optionally ``mask``.
    kernel
        A spec (:func:`~cubepipe.pipeline.filters.parse_kernel`): ``gaussian:SIGMA``,
        ``box:N``, ``file:K.npy``, ``lowpass:F``, ``highpass:F``, ``bandpass:F1,F2``.
    axis
        ``spatial``: 2-D over each ``(y, x)`` plane; ``spectral``: 1-D along ``band``.
    method
        ``direct``, ``rfft`` (real FFT; ``fft`` is the same) or ``auto`` (by kernel
        cost; see :func:`~cubepipe.pipeline.filters.choose_method`). The result is the
        same; the report names the one used (``direct`` or ``rfft``).
    mode
        Boundary: ``reflect`` (mirror, edge repeated), ``nearest`` (edge value),
        ``constant`` (zeros; in masked filtering: the outside counts as invalid).
    mask_nan
        Treat NaN/inf as invalid and use normalized convolution. Normalized convolution
        is also used whenever ``ds`` has a ``mask``. Without either, NaN spreads to every
        output whose kernel covers it, as in scipy.ndimage.
    min_support
        Masked only: an output is valid where the kernel sees at least this fraction of
        its weight on valid values, ``0 < min_support <= 1``.
    fill
        Masked only: also give invalid input values an estimate where supported.
    fft_tile
        FFT path only: the longest tile edge along ``y``/``x``. The plane is cut into
        equal tiles no longer than this (with the kernel's halo), one band per task, so
        padding and halos cost little while memory stays bounded for any plane size.
    device
        ``"cpu"``, ``"gpu"`` (or a :class:`~cubepipe.pipeline.backend.Device`): move the
        chunks there first; None: filter where the chunks are.

    Returns
    -------
    xarray.Dataset
        ``variable`` filtered (float32, or float64 for float64 input; float64 arithmetic),
        same dims, coords and chunks (chunks smaller than the halo are merged), with attr
        ``cubepipe_filter`` recording the kernel, method (and why), mode and options; the
        ``mask`` copied (with ``fill``: True where any value of the pixel is valid).

    Notes
    -----
    Convolution, not correlation: ``out[i] = sum_j k[j] x[i + c - j]`` with centre
    ``c = n // 2`` per axis, as :func:`scipy.ndimage.convolve`. Chunks get halos of
    ``n // 2`` (``dask.array.map_overlap``), so the chunked result equals the whole-plane
    one; masked filtering is normalized convolution (Knutsson & Westin, 1993).
    """
    _check(axis, method, mode, min_support)
    spec = kernel if isinstance(kernel, KernelSpec) else parse_kernel(kernel)
    if device is not None:
        ds = to_device(ds, device)
    cube, valid = cube_and_valid(ds, variable)
    dims = AXES[axis]
    if not set(dims) <= set(cube.dims):
        raise InputError(f"variable {variable!r} has dims {cube.dims}; --axis {axis} needs {dims}")
    k = make_kernel(spec, len(dims))
    masked = bool(mask_nan or valid is not None)
    if masked:
        for _, t in k.terms:
            if not abs(t.total) > 1e-9 * float(np.abs(t.weights).sum()):
                raise InputError(
                    f"kernel {spec.spec!r} sums to 0, so normalized convolution (--mask-nan "
                    "or a store mask) is undefined; use a kernel whose weights have a "
                    "nonzero sum"
                )
    chosen, reason = choose_method(k, method, masked=masked)
    axes = tuple(cube.get_axis_num(d) for d in dims)
    depth = k.depth
    data = cube.data
    if chosen == "rfft" and axis == "spatial":
        # FFT tiles larger than store chunks: less halo and padding-to-fast-length waste
        # (a 512 chunk + halo pads to ~1.2x the work; a 1250 tile to ~1.05x), one band
        # per task so a tile's spectrum stays small.
        tiles = {ax: _fft_tile(data.shape[ax], fft_tile) for ax in axes}
        tiles[cube.get_axis_num("band")] = 1
        data = data.rechunk(tiles)
        valid = None if valid is None else valid.rechunk(data.chunks)
    rechunk, inside = _halo_chunks(data, axes, depth)
    if rechunk:
        data = data.rechunk(rechunk)
        valid = None if valid is None else valid.rechunk(rechunk)
    out_dtype = filter_dtype(cube.dtype)
    plan = _Plan(k, chosen, mode, axes, depth, inside, masked, bool(mask_nan),
                 float(min_support), bool(fill), out_dtype.str)  # fmt: skip
    args = [data] if valid is None else [data, valid]
    halo = {ax: 0 if ins else d for ax, d, ins in zip(axes, depth, inside, strict=True)}
    edge = {ax: _DASK_BOUNDARY[mode] for ax in axes}  # the valid array: False outside
    edges = [{ax: plan.outside for ax in axes} if mode == "constant" else edge, edge]
    result = da.map_overlap(
        _filter_block,
        *args,
        depth=[halo] * len(args),
        boundary=edges[: len(args)],
        trim=False,
        align_arrays=False,
        allow_rechunk=False,
        chunks=data.chunks,
        dtype=out_dtype,
        meta=data._meta.astype(out_dtype),
        token=f"cubepipe-filter-{chosen}",
        plan=plan,
    )
    report = {
        "kernel": spec.spec,
        "axis": axis,
        "method": chosen,
        "method_reason": reason,
        "mode": mode,
        "kernel_shape": list(k.taps.shape),
        "separable": k.taps.factors is not None,
        "halo": list(depth),
        "masked": masked,
        "mask_nan": bool(mask_nan),
        "min_support": float(min_support),
        "fill": bool(fill),
    }
    out = cube.copy(data=result)
    out.attrs = {
        **{a: v for a, v in cube.attrs.items() if a not in ("scale_factor", "add_offset")},
        FILTER_ATTR: report,
    }
    res = xr.Dataset({variable: out}, attrs=ds.attrs)
    if "mask" in ds and variable != "mask":
        mask = ds["mask"]
        if fill and masked:
            extra = [d for d in out.dims if d not in mask.dims]
            mask = out.notnull().any(dim=extra).transpose(*mask.dims).astype(mask.dtype)
        res["mask"] = mask
    return res
