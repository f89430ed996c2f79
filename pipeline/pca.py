"""Out-of-core PCA of the spectral axis: fit in one pass, project in a second.

Fitting reads the cube once: every chunk gives float64 per-band statistics and the centred
co-moments ``{n, mean, C}`` of its pixels valid in every band, merged by the parallel
(Chan) update in a dask tree reduction (:mod:`cubepipe.pipeline.moments`). The
band x band covariance ``C / (n - 1)`` (or the correlation, with ``standardize``) is
decomposed with :func:`cubepipe.pipeline.linalg.eigh` in float64; components are
sign-normalised (largest |loading| positive) so results are deterministic. Projecting
reads the cube once more, writes ``scores(component, y, x)`` and, in the same pass,
the reconstruction's error metrics.

The model lives in the output store as plain float64 variables (``pca_components``,
``pca_mean``, ``pca_scale``, ``pca_explained_variance``, ...), so it re-applies to any
other store or stream from those alone.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from cubepipe.storage.errors import CubepipeWarning, InputError

from .backend import array_namespace
from .linalg import eigh
from .moments import NFIELDS, band_moments, strip_pixels
from .stats import cube_and_valid, stats_from_packed

__all__ = [
    "MODEL_VARS",
    "choose_components",
    "fit_pca",
    "pca_encode",
    "pca_project",
    "pca_reconstruct",
    "reconstruction_metrics",
    "summarize_metrics",
]

MODEL_VARS = (
    "pca_components",
    "pca_mean",
    "pca_scale",
    "pca_explained_variance",
    "pca_explained_variance_ratio",
    "pca_spectrum",
)


def choose_components(
    ratio: np.ndarray, *, n_components: int | None, variance: float | None
) -> int:
    """How many components to keep: ``n_components``, or the fewest whose cumulative
    explained-variance ratio exceeds ``variance`` (the rule scikit-learn's
    ``PCA(n_components=0.99)`` uses: ``searchsorted(cumsum, variance, side="right") + 1``)."""
    nb = ratio.size
    if (n_components is None) == (variance is None):
        raise InputError("give exactly one of --components K or --variance F")
    if n_components is not None:
        if not 1 <= n_components <= nb:
            raise InputError(
                f"--components must be between 1 and {nb} (the band count); got {n_components}"
            )
        return int(n_components)
    if not 0 < variance < 1:
        raise InputError(f"--variance must be a fraction in (0, 1); got {variance}")
    cum = np.cumsum(ratio)
    return int(min(np.searchsorted(cum, variance, side="right") + 1, nb))


def fit_pca(
    ds: xr.Dataset,
    *,
    n_components: int | None = None,
    variance: float | None = None,
    standardize: bool = False,
    whiten: bool = False,
    variable: str = "cube",
    split_every: int | None = None,
    sample: float | None = None,
    seed: int = 0,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Fit PCA over the band axis of ``ds[variable]`` in one pass over the data.

    Parameters
    ----------
    ds
        Input with ``variable`` of dims ``(..., band, y, x)``. Pixels with NaN in any band
        or ``mask`` False are left out of the fit.
    n_components, variance
        Exactly one: the number of components K, or the explained-variance fraction.
    standardize
        Fit on per-band z-scores (correlation PCA); ``pca_scale`` holds the stds used.
    whiten
        Scores are divided by ``sqrt(explained_variance)`` (unit variance).
    sample, seed
        Fit on a random fraction ``sample`` (0 < F <= 1) of the chunks (at least one),
        chosen reproducibly from ``seed``: only those chunks are read, so the fit costs
        that fraction of a pass. Whole chunks, not scattered pixels, because a chunk is
        the unit of reading; with chunks small beside the image's structure the estimate
        is close to the full fit (the model's attrs record the fraction and chunk count).

    Returns
    -------
    (model, stats)
        ``model``: the ``pca_*`` variables (float64), computed. ``stats``: the per-band
        ``stats_*`` of the same pass (each band's own valid values; of the sample only
        when ``sample`` is given).

    Notes
    -----
    The covariance uses ``n - 1`` (as scikit-learn's ``explained_variance_``). On data with
    an offset the co-moments stay exact because only centred products are summed.
    """
    cube, valid = cube_and_valid(ds, variable)
    band_axis = cube.get_axis_num("band")
    blocks = None if sample is None else _sample_blocks(cube.data, band_axis, sample, seed)
    packed = band_moments(
        cube.data,
        band_axis=band_axis,
        valid=valid,
        split_every=split_every,
        name="cubepipe-compress-fit",
        kind="comoments",
        blocks=blocks,
    )
    packed = np.asarray(_to_host(packed.compute()))
    stats = stats_from_packed(packed[:, :NFIELDS], cube, variable)
    n = float(packed[0, NFIELDS])
    nb = packed.shape[0]
    if n < 2:
        raise InputError(
            f"PCA needs at least 2 pixels valid in every band; {variable!r} has {int(n)}"
        )
    mean = packed[:, NFIELDS + 1]
    cov = packed[:, NFIELDS + 2 :] / (n - 1)
    scale = np.ones(nb)
    if standardize:
        std = np.sqrt(np.diag(cov) * (n - 1) / n)  # population std of the fitted pixels
        flat = ~(std > 0)
        if flat.any():
            warnings.warn(
                f"{int(flat.sum())} band(s) are constant over the fitted pixels; "
                "they are left unscaled",
                CubepipeWarning,
                stacklevel=2,
            )
            std[flat] = 1.0
        scale = std
        cov = cov / np.outer(scale, scale)
    e = eigh(cov)
    values = np.clip(np.asarray(e.values), 0.0, None)
    vectors = np.asarray(e.vectors).T  # (component, band)
    signs = np.sign(vectors[np.arange(nb), np.argmax(np.abs(vectors), axis=1)])
    vectors = vectors * signs[:, None]
    total = values.sum()
    ratio = values / total if total > 0 else np.zeros_like(values)
    k = choose_components(ratio, n_components=n_components, variance=variance)
    if whiten and values[k - 1] <= np.finfo(np.float64).eps * nb * values[0]:
        warnings.warn(
            f"whitening: component {k} has explained variance {values[k - 1]:.3g}, below "
            "what float64 resolves relative to the first; its scores are noise amplified",
            CubepipeWarning,
            stacklevel=2,
        )
    comp = np.arange(k)
    model = xr.Dataset(
        {
            "pca_components": (("component", "band"), vectors[:k]),
            "pca_mean": ("band", mean),
            "pca_scale": ("band", scale),
            "pca_explained_variance": ("component", values[:k]),
            "pca_explained_variance_ratio": ("component", ratio[:k]),
            "pca_spectrum": ("eigen", values),
        },
        coords={"component": comp},
    )
    model["pca_components"].attrs.update(
        {
            "whiten": bool(whiten),
            "standardized": bool(standardize),
            "n_samples": int(n),
            "covariance_condition": float(e.cond),
            "variable": variable,
        }
    )
    if blocks is not None:
        model["pca_components"].attrs.update(
            {"sample_fraction": float(sample), "sample_chunks": len(blocks), "sample_seed": seed}
        )
        stats.attrs["sample_fraction"] = float(sample)
    return model, stats


def _sample_blocks(data: da.Array, band_axis: int, fraction: float, seed: int) -> list[tuple]:
    """Indices of a reproducible random ``fraction`` of the chunks (band axis whole)."""
    if not 0 < fraction <= 1:
        raise InputError(f"sample fraction must be in (0, 1], got {fraction}")
    grid = tuple(1 if i == band_axis else len(c) for i, c in enumerate(data.chunks))
    total = int(np.prod(grid))
    count = max(1, int(np.ceil(fraction * total)))
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))
    return [tuple(int(i) for i in np.unravel_index(j, grid)) for j in chosen]


def _to_host(a: Any) -> Any:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a


def _model_arrays(model: xr.Dataset) -> dict[str, np.ndarray]:
    missing = [v for v in MODEL_VARS[:5] if v not in model]
    if missing:
        raise InputError(f"not a fitted PCA model (missing {', '.join(missing)})")
    w = np.asarray(model["pca_components"].values, dtype=np.float64)
    factor = np.ones(w.shape[0])
    if bool(model["pca_components"].attrs.get("whiten", False)):
        ev = np.asarray(model["pca_explained_variance"].values, dtype=np.float64)
        factor = np.sqrt(np.where(ev > 0, ev, 1.0))
    return {
        "w": w,
        "mean": np.asarray(model["pca_mean"].values, dtype=np.float64),
        "scale": np.asarray(model["pca_scale"].values, dtype=np.float64),
        "factor": factor,
    }


def _as_rows(xp: Any, a: Any, axis: int) -> Any:
    """``(..., B, ...)`` -> ``(B, N)`` (a view when ``a`` is contiguous)."""
    return xp.reshape(xp.moveaxis(a, axis, 0), (a.shape[axis], -1))


def _from_rows(xp: Any, rows: Any, like_shape: tuple[int, ...], axis: int) -> Any:
    shape = (rows.shape[0],) + tuple(n for i, n in enumerate(like_shape) if i != axis)
    return xp.moveaxis(xp.reshape(rows, shape), 0, axis)


def _encode_rows(
    xp: Any, x: Any, v: Any, m: dict[str, np.ndarray], *, metrics: bool
) -> tuple[Any, list[float]]:
    """Scores ``(K, N)`` float32 of pixel rows ``x (B, N)`` and, if ``metrics``, the error
    partials ``[sse, n_values, sam_sum, n_pixels, min, max]`` of their reconstruction from
    those float32 scores. Strip by strip: every float64 temporary is small enough to stay
    in cache, and the centred data ``u = x - mean`` is formed once for both; the scale and
    whitening are folded into the small matrices.
    """
    scale = m["scale"][None, :]
    w = xp.asarray(m["w"] / m["factor"][:, None] / scale)  # (K, B): u -> scores
    wt = xp.asarray((m["w"] * m["factor"][:, None] * scale).T)  # (B, K): scores -> u
    mean = xp.asarray(m["mean"])[:, None]
    out = xp.empty((w.shape[0], x.shape[1]), dtype=xp.float32)
    errors = _Errors(xp, x, wt) if metrics else None
    for a, xd, xx, u, ok, every in _centred_strips(xp, x, mean, valid=v):
        s = xp.astype(w @ u, xp.float32)
        if not every:
            s = xp.where(ok[None, :], s, xp.asarray(xp.nan, dtype=xp.float32))
        out[:, a : a + s.shape[1]] = s
        if errors is not None:
            errors.add(a, xd, xx, u, s, ok, every)
    return out, ([] if errors is None else errors.partial())


def _centred_strips(
    xp: Any, x: Any, mean: Any, *, valid: Any = None, scores: Any = None
) -> Iterator[tuple[int, Any, Any, Any, Any, bool]]:
    """Walk the pixel rows ``x (B, N)`` in cache-sized strips, yielding ``(start, xd, xx,
    u, ok, every)``: the strip in float64, its per-pixel ``|x|^2``, the centred
    ``u = x - mean`` (0 at invalid pixels), which pixels are valid (no NaN in any band,
    ``valid`` all True, no NaN in ``scores``) and whether all are. The buffers are made
    once per chunk (a fresh large temporary per strip costs page faults that can exceed
    the arithmetic) and reused: use each strip before asking for the next.
    """
    step = strip_pixels(x.shape[0])
    buf = xp.empty((2, x.shape[0], max(1, min(step, x.shape[1]))), dtype=xp.float64)
    for a in range(0, x.shape[1], step):
        n = min(step, x.shape[1] - a)
        xd = buf[0, :, :n]
        xd[...] = x[:, a : a + n]
        xx = _colsum(xp, xd, xd)  # NaN in any band makes the pixel's |x|^2 NaN
        ok = ~xp.isnan(xx)
        if valid is not None:
            ok = ok & xp.all(xp.astype(valid[:, a : a + n], xp.bool), axis=0)
        if scores is not None:
            ok = ok & ~xp.any(xp.isnan(scores[:, a : a + n]), axis=0)
        every = bool(xp.all(ok))
        u = buf[1, :, :n]
        u[...] = xd
        u -= mean
        if not every:
            u = xp.where(ok[None, :], u, 0.0)
        yield a, xd, xx, u, ok, every


def _module(a: Any) -> Any:
    """NumPy or CuPy itself (for ``out=`` arguments the array-API wrappers lack)."""
    return (
        np
        if isinstance(a, np.ndarray)
        else importlib.import_module(type(a).__module__.split(".")[0])
    )


def _colsum(xp: Any, a: Any, b: Any) -> Any:
    """Per-column ``sum(a * b)`` over rows (NumPy: one einsum pass, no temporary)."""
    if isinstance(a, np.ndarray):
        return np.einsum("bn,bn->n", a, b)
    return xp.sum(a * b, axis=0)


class _Errors:
    """Reconstruction-error partials of one chunk ``x (B, N)``, gathered strip by strip.

    Per pixel it keeps ``|x|^2``, ``x . e`` and ``|e|^2`` where ``e = u - W^T s`` is the
    error in the centred space (so it does not cancel against an offset; ``wt`` maps
    the stored scores back to ``u``); :meth:`partial` turns them, once per chunk, into
    ``[sse, n_values, sam_sum, n_pixels, min, max]``. The spectral angle uses
    ``x . x_hat = |x|^2 - x . e`` and ``|x_hat|^2 = |x|^2 - 2 x . e + |e|^2``.
    """

    def __init__(self, xp: Any, x: Any, wt: Any) -> None:
        self.xp, self.x, self.wt = xp, x, wt
        width = max(1, min(strip_pixels(x.shape[0]), x.shape[1]))
        self.work = xp.empty((x.shape[0], width), dtype=xp.float64)  # e, one strip
        n = x.shape[1]
        self.xx = xp.zeros(n, dtype=xp.float64)
        self.xe = xp.zeros(n, dtype=xp.float64)
        self.ee = xp.zeros(n, dtype=xp.float64)
        self.ok = xp.zeros(n, dtype=xp.bool)

    def add(self, a: int, xd: Any, xx: Any, u: Any, s: Any, ok: Any, every: bool) -> None:
        """One strip from pixel ``a``: ``xd`` the float64 data, ``xx`` its ``|x|^2``,
        ``u`` the centred data (0 where not ``ok``), ``s`` the stored float32 scores."""
        xp = self.xp
        b = a + xd.shape[1]
        if not every:
            s = xp.where(ok[None, :], s, 0.0)
            xd = xp.where(ok[None, :], xd, 0.0)
            xx = xp.where(ok, xx, 0.0)
        e = self.work[:, : xd.shape[1]]
        _module(e).matmul(self.wt, xp.astype(s, xp.float64), out=e)
        e *= -1.0
        e += u
        self.xx[a:b] = xx
        self.xe[a:b] = _colsum(xp, xd, e)
        self.ee[a:b] = _colsum(xp, e, e)
        self.ok[a:b] = ok

    def partial(self) -> list[float]:
        xp, ok = self.xp, self.ok
        npix = int(xp.sum(xp.astype(ok, xp.int64)))
        if npix == 0:
            return [0.0, 0.0, 0.0, 0.0, float("inf"), float("-inf")]
        xx, xe, ee = self.xx, self.xe, self.ee
        nx = xp.sqrt(xx)
        ny = xp.sqrt(xp.clip(xx - 2 * xe + ee, 0.0, None))
        good = ok & (nx > 0) & (ny > 0)
        cos = xp.clip((xx - xe) / xp.where(good, nx * ny, 1.0), -1.0, 1.0)
        if npix == ok.shape[0]:  # every pixel valid: no NaN anywhere
            lo, hi = xp.min(self.x), xp.max(self.x)
        else:
            lo = xp.min(xp.where(ok[None, :], self.x, xp.inf))
            hi = xp.max(xp.where(ok[None, :], self.x, -xp.inf))
        return [
            float(xp.sum(xp.where(ok, ee, 0.0))),
            float(npix * self.x.shape[0]),
            float(xp.sum(xp.where(good, xp.acos(cos), 0.0))),
            float(xp.sum(xp.astype(good, xp.float64))),
            float(lo),
            float(hi),
        ]


def _project_block(block: Any, *valid: Any, m: dict[str, np.ndarray], axis: int) -> Any:
    xp = array_namespace(block)
    v = _as_rows(xp, valid[0], axis) if valid else None
    out, _ = _encode_rows(xp, _as_rows(xp, block, axis), v, m, metrics=False)
    return _from_rows(xp, out, block.shape, axis)


def _encode_block(
    block: Any, *valid: Any, m: dict[str, np.ndarray], axis: int, ndim: int
) -> tuple[Any, Any]:
    """Scores and error partials of one chunk, from one look at it (see
    :func:`pca_encode`): a pair, split by :func:`_first` and :func:`_second`."""
    xp = array_namespace(block)
    v = _as_rows(xp, valid[0], axis) if valid else None
    out, acc = _encode_rows(xp, _as_rows(xp, block, axis), v, m, metrics=True)
    partial = xp.reshape(xp.asarray(acc, dtype=xp.float64), (1,) * ndim + (6,))
    return _from_rows(xp, out, block.shape, axis), partial


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _second(pair: tuple[Any, Any]) -> Any:
    return pair[1]


def _reconstruct_block(scores: Any, *, m: dict[str, np.ndarray], axis: int) -> Any:
    xp = array_namespace(scores)
    s = _as_rows(xp, scores, axis)
    wt = xp.asarray((m["w"] * m["factor"][:, None]).T)  # (B, K)
    mean, scale = xp.asarray(m["mean"])[:, None], xp.asarray(m["scale"])[:, None]
    out = xp.empty((wt.shape[0], s.shape[1]), dtype=xp.float32)
    step = strip_pixels(wt.shape[0])
    for a in range(0, s.shape[1], step):
        xhat = wt @ xp.astype(s[:, a : a + step], xp.float64)
        xhat *= scale
        xhat += mean
        out[:, a : a + step] = xp.astype(xhat, xp.float32)
    return _from_rows(xp, out, scores.shape, axis)


def _prepare_project(
    ds: xr.Dataset, model: xr.Dataset, variable: str
) -> tuple[xr.DataArray, list[da.Array], dict[str, np.ndarray], int]:
    cube, valid = cube_and_valid(ds, variable)
    m = _model_arrays(model)
    if m["w"].shape[1] != cube.sizes["band"]:
        raise InputError(
            f"the PCA model has {m['w'].shape[1]} bands but {variable!r} has {cube.sizes['band']}"
        )
    axis = cube.get_axis_num("band")
    data = cube.data.rechunk({axis: -1})
    args = [data] if valid is None else [data, valid.rechunk(data.chunks)]
    return cube, args, m, axis


def _scores_array(cube: xr.DataArray, scores: da.Array) -> xr.DataArray:
    dims = tuple("component" if d == "band" else d for d in cube.dims)
    k = scores.shape[cube.get_axis_num("band")]
    return xr.DataArray(scores, dims=dims, coords={"component": np.arange(k)})


def pca_project(ds: xr.Dataset, model: xr.Dataset, *, variable: str = "cube") -> xr.DataArray:
    """Lazy ``scores`` of dims ``(..., component, y, x)`` float32; NaN where the input
    pixel is invalid (NaN in any band, or mask False)."""
    cube, args, m, axis = _prepare_project(ds, model, variable)
    k = m["w"].shape[0]
    chunks = tuple((k,) if i == axis else c for i, c in enumerate(args[0].chunks))
    scores = da.map_blocks(
        _project_block,
        *args,
        m=m,
        axis=axis,
        chunks=chunks,
        dtype=np.float32,
        meta=args[0]._meta.astype(np.float32),
        token="cubepipe-compress-project",
    )
    return _scores_array(cube, scores)


def pca_encode(
    ds: xr.Dataset, model: xr.Dataset, *, variable: str = "cube"
) -> tuple[xr.DataArray, da.Array]:
    """Lazy scores (as :func:`pca_project`) and, from the same task per chunk, the
    reconstruction's error partials (as :func:`reconstruction_metrics`): each chunk is
    read, centred and projected once for both. Compute them together (e.g. write the
    scores with the partials as ``results``)."""
    cube, args, m, axis = _prepare_project(ds, model, variable)
    k = m["w"].shape[0]
    data = args[0]
    ndim = data.ndim
    chunks = tuple((k,) if i == axis else c for i, c in enumerate(data.chunks))
    pairs = da.map_blocks(
        _encode_block,
        *args,
        m=m,
        axis=axis,
        ndim=ndim,
        chunks=chunks,
        dtype=np.float32,
        meta=data._meta.astype(np.float32),
        token="cubepipe-compress-encode",
    )
    scores = pairs.map_blocks(
        _first,
        dtype=np.float32,
        meta=data._meta.astype(np.float32),
        token="cubepipe-compress-scores",
    )
    partials = pairs.map_blocks(
        _second,
        new_axis=ndim,
        chunks=tuple((1,) * len(c) for c in data.chunks) + ((6,),),
        dtype=np.float64,
        meta=data._meta.astype(np.float64).reshape((0,) * (ndim + 1)),
        token="cubepipe-compress-metrics",
    )
    return _scores_array(cube, scores), partials


def pca_reconstruct(scores: xr.DataArray, model: xr.Dataset) -> xr.DataArray:
    """Lazy reconstruction ``(..., band, y, x)`` float32 from ``scores``."""
    m = _model_arrays(model)
    axis = scores.get_axis_num("component")
    data = scores.data.rechunk({axis: -1})
    nb = m["w"].shape[1]
    chunks = tuple((nb,) if i == axis else c for i, c in enumerate(data.chunks))
    out = da.map_blocks(
        _reconstruct_block,
        data,
        m=m,
        axis=axis,
        chunks=chunks,
        dtype=np.float32,
        meta=data._meta.astype(np.float32),
        token="cubepipe-reconstruct",
    )
    dims = tuple("band" if d == "component" else d for d in scores.dims)
    return xr.DataArray(out, dims=dims)


def _metric_block(x: Any, s: Any, *, m: dict[str, np.ndarray], axis: int, ndim: int) -> Any:
    """Error partials of one chunk reconstructed from the scores ``s``, strip by strip,
    without rebuilding the whole chunk (see :class:`_Errors`)."""
    xp = array_namespace(x)
    rows = _as_rows(xp, x, axis)
    srows = _as_rows(xp, s, axis)
    wt = xp.asarray((m["w"] * m["factor"][:, None] * m["scale"][None, :]).T)  # (B, K)
    mean = xp.asarray(m["mean"])[:, None]
    errors = _Errors(xp, rows, wt)
    for a, xd, xx, u, ok, every in _centred_strips(xp, rows, mean, scores=srows):
        errors.add(a, xd, xx, u, srows[:, a : a + xd.shape[1]], ok, every)
    return xp.reshape(xp.asarray(errors.partial(), dtype=xp.float64), (1,) * ndim + (6,))


def reconstruction_metrics(
    ds: xr.Dataset, scores: xr.DataArray, model: xr.Dataset, *, variable: str = "cube"
) -> da.Array:
    """Lazy per-chunk partials ``[sse, n_values, sam_sum, n_pixels, min, max]`` of the
    reconstruction error, sharing the input reads of ``scores``;
    see :func:`summarize_metrics`."""
    cube, _ = cube_and_valid(ds, variable)
    m = _model_arrays(model)
    axis = cube.get_axis_num("band")
    data = cube.data.rechunk({axis: -1})
    s = scores.data
    ndim = data.ndim
    return da.map_blocks(
        _metric_block,
        data,
        s,
        m=m,
        axis=axis,
        ndim=ndim,
        new_axis=ndim,
        chunks=tuple((1,) * len(c) for c in data.chunks) + ((6,),),
        dtype=np.float64,
        meta=data._meta.astype(np.float64).reshape((0,) * (ndim + 1)),
        token="cubepipe-compress-metrics",
    )


def summarize_metrics(partials: Any) -> dict[str, float]:
    """RMSE (data units), PSNR (dB, peak = data range), mean spectral angle (radians and
    degrees) from the partials of :func:`reconstruction_metrics`."""
    p = np.asarray(_to_host(partials)).reshape(-1, 6)
    sse, nvals, sam, npix = (float(p[:, i].sum()) for i in range(4))
    lo, hi = float(p[:, 4].min()), float(p[:, 5].max())
    mse = sse / nvals if nvals else float("nan")
    rmse = float(np.sqrt(mse))
    peak = hi - lo
    psnr = float(10 * np.log10(peak * peak / mse)) if mse > 0 else float("inf")
    sam_mean = sam / npix if npix else float("nan")
    return {
        "rmse": rmse,
        "psnr_db": psnr,
        "sam_rad": sam_mean,
        "sam_deg": float(np.degrees(sam_mean)),
        "n_values": int(nvals),
        "data_range": peak,
    }
