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

import warnings
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

    Returns
    -------
    (model, stats)
        ``model``: the ``pca_*`` variables (float64), computed. ``stats``: the per-band
        ``stats_*`` of the same pass (each band's own valid values).

    Notes
    -----
    The covariance uses ``n - 1`` (as scikit-learn's ``explained_variance_``). On data with
    an offset the co-moments stay exact because only centred products are summed.
    """
    cube, valid = cube_and_valid(ds, variable)
    band_axis = cube.get_axis_num("band")
    packed = band_moments(
        cube.data,
        band_axis=band_axis,
        valid=valid,
        split_every=split_every,
        name="cubepipe-compress-fit",
        kind="comoments",
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
    return model, stats


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


def _centred(xp: Any, x: Any, valid: Any, m: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """float64 ``z = (x - mean) / scale`` of a strip ``(B, n)`` and its pixels' validity."""
    z = xp.astype(x, xp.float64)
    z -= xp.asarray(m["mean"])[:, None]
    z /= xp.asarray(m["scale"])[:, None]
    ok = ~xp.any(xp.isnan(z), axis=0)
    if valid is not None:
        ok = ok & xp.all(xp.astype(valid, xp.bool), axis=0)
    return z, ok


def _project_block(block: Any, *valid: Any, m: dict[str, np.ndarray], axis: int) -> Any:
    xp = array_namespace(block)
    x = _as_rows(xp, block, axis)
    v = _as_rows(xp, valid[0], axis) if valid else None
    w = xp.asarray(m["w"] / m["factor"][:, None])  # (K, B), whitening folded in
    out = xp.empty((w.shape[0], x.shape[1]), dtype=xp.float32)
    step = strip_pixels(x.shape[0])
    for a in range(0, x.shape[1], step):
        z, ok = _centred(xp, x[:, a : a + step], None if v is None else v[:, a : a + step], m)
        z = xp.where(ok[None, :], z, 0.0)
        out[:, a : a + step] = xp.astype(xp.where(ok[None, :], w @ z, xp.nan), xp.float32)
    return _from_rows(xp, out, block.shape, axis)


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


def pca_project(ds: xr.Dataset, model: xr.Dataset, *, variable: str = "cube") -> xr.DataArray:
    """Lazy ``scores`` of dims ``(..., component, y, x)`` float32; NaN where the input
    pixel is invalid (NaN in any band, or mask False)."""
    cube, valid = cube_and_valid(ds, variable)
    m = _model_arrays(model)
    if m["w"].shape[1] != cube.sizes["band"]:
        raise InputError(
            f"the PCA model has {m['w'].shape[1]} bands but {variable!r} has {cube.sizes['band']}"
        )
    axis = cube.get_axis_num("band")
    data = cube.data.rechunk({axis: -1})
    args = [data] if valid is None else [data, valid.rechunk(data.chunks)]
    k = m["w"].shape[0]
    chunks = tuple((k,) if i == axis else c for i, c in enumerate(data.chunks))
    scores = da.map_blocks(
        _project_block,
        *args,
        m=m,
        axis=axis,
        chunks=chunks,
        dtype=np.float32,
        meta=data._meta.astype(np.float32),
        token="cubepipe-compress-project",
    )
    dims = tuple("component" if d == "band" else d for d in cube.dims)
    return xr.DataArray(scores, dims=dims, coords={"component": np.arange(k)})


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
    """Error partials of one chunk, strip by strip, without rebuilding the whole chunk:
    the reconstruction is ``x_hat = x - e`` with ``e = scale * (z - W^T s)``, so
    ``x . x_hat = |x|^2 - x . e`` and ``|x_hat|^2 = |x|^2 - 2 x . e + |e|^2``."""
    xp = array_namespace(x)
    rows = _as_rows(xp, x, axis)
    srows = _as_rows(xp, s, axis)
    wt = xp.asarray((m["w"] * m["factor"][:, None]).T)  # (B, K): unwhitens the scores
    scale = xp.asarray(m["scale"])[:, None]
    acc = [0.0, 0.0, 0.0, 0.0, float("inf"), float("-inf")]
    step = strip_pixels(rows.shape[0])
    for a in range(0, rows.shape[1], step):
        z, ok = _centred(xp, rows[:, a : a + step], None, m)
        sv = xp.astype(srows[:, a : a + step], xp.float64)
        ok = ok & ~xp.any(xp.isnan(sv), axis=0)
        if not bool(xp.any(ok)):
            continue
        z, sv = z[:, ok], sv[:, ok]
        xv = xp.astype(rows[:, a : a + step][:, ok], xp.float64)
        e = (z - wt @ sv) * scale
        xx = xp.vecdot(xv, xv, axis=0)
        xe = xp.vecdot(xv, e, axis=0)
        ee = xp.vecdot(e, e, axis=0)
        nx = xp.sqrt(xx)
        ny = xp.sqrt(xp.clip(xx - 2 * xe + ee, 0.0, None))
        good = (nx > 0) & (ny > 0)
        cos = xp.clip((xx - xe) / xp.where(good, nx * ny, 1.0), -1.0, 1.0)
        acc[0] += float(xp.sum(ee))
        acc[1] += float(xv.shape[0] * xv.shape[1])
        acc[2] += float(xp.sum(xp.where(good, xp.acos(cos), 0.0)))
        acc[3] += float(xp.sum(xp.astype(good, xp.float64)))
        acc[4] = min(acc[4], float(xp.min(xv)))
        acc[5] = max(acc[5], float(xp.max(xv)))
    return xp.reshape(xp.asarray(acc, dtype=xp.float64), (1,) * ndim + (6,))


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
