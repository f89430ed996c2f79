"""Out-of-core PCA of the spectral axis: fit in one pass, project in a second.

Fitting reads the cube once: every chunk gives float64 per-band statistics and the centred
co-moments ``{n, mean, C}`` of its pixels valid in every band, merged by the parallel
(Chan) update in a dask tree reduction (:mod:`cubepipe.pipeline.stats.moments`). The
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

from cubepipe.pipeline.compression.pca_kernels import (
    encode_block,
    metric_block,
    pair_first,
    pair_second,
    project_block,
    reconstruct_block,
)
from cubepipe.pipeline.cube import cube_and_valid
from cubepipe.pipeline.linalg import eigh
from cubepipe.pipeline.stats.fit import stats_from_packed
from cubepipe.pipeline.stats.moments import NFIELDS, band_moments
from cubepipe.storage.errors import CubepipeWarning, InputError

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
    assert variance is not None  # exactly one of the two was given
    if not 0 < variance < 1:
        raise InputError(f"--variance must be a fraction in (0, 1); got {variance}")
    cum = np.cumsum(ratio)
    return min(int(np.searchsorted(cum, variance, side="right")) + 1, nb)


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
    moments = np.asarray(_to_host(packed.compute()))
    stats = stats_from_packed(moments[:, :NFIELDS], cube, variable)
    n = float(moments[0, NFIELDS])
    nb = moments.shape[0]
    if n < 2:
        raise InputError(
            f"PCA needs at least 2 pixels valid in every band; {variable!r} has {int(n)}"
        )
    mean = moments[:, NFIELDS + 1]
    cov = moments[:, NFIELDS + 2 :] / (n - 1)
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
    if blocks is not None and sample is not None:
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
    """The model's arrays as C-contiguous float64 host arrays, however the dataset holds
    them (views of a fitted result, arrays read from a store, unpickled on a worker): the
    kernels' BLAS products sum in an order that depends on the operands' layout, so the
    same model must have one layout for its error sums to agree to the last bit."""
    missing = [v for v in MODEL_VARS[:5] if v not in model]
    if missing:
        raise InputError(f"not a fitted PCA model (missing {', '.join(missing)})")
    w = np.ascontiguousarray(model["pca_components"].values, dtype=np.float64)
    factor = np.ones(w.shape[0])
    if bool(model["pca_components"].attrs.get("whiten", False)):
        ev = np.asarray(model["pca_explained_variance"].values, dtype=np.float64)
        factor = np.sqrt(np.where(ev > 0, ev, 1.0))
    return {
        "w": w,
        "mean": np.ascontiguousarray(model["pca_mean"].values, dtype=np.float64),
        "scale": np.ascontiguousarray(model["pca_scale"].values, dtype=np.float64),
        "factor": factor,
    }


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
        project_block,
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
        encode_block,
        *args,
        m=m,
        axis=axis,
        ndim=ndim,
        chunks=chunks,
        dtype=np.float32,
        meta=data._meta.astype(np.float32),
        token="cubepipe-compress-encode",
    )
    scores, partials = split_pairs(pairs, data, 6)
    return _scores_array(cube, scores), partials


def split_pairs(pairs: Any, data: da.Array, npartial: int) -> tuple[da.Array, da.Array]:
    """The two halves of an encode task's per-chunk ``(scores, partials)`` pairs (PCA and
    the autoencoders): the float32 scores, chunked as ``pairs``, and the float64 error
    partials, ``npartial`` per chunk along a new last axis. The encode task reads the
    chunk once; these two only pick from its result."""
    ndim = data.ndim
    scores = pairs.map_blocks(
        pair_first,
        dtype=np.float32,
        meta=data._meta.astype(np.float32),
        token="cubepipe-compress-scores",
    )
    partials = pairs.map_blocks(
        pair_second,
        new_axis=ndim,
        chunks=tuple((1,) * len(c) for c in data.chunks) + ((npartial,),),
        dtype=np.float64,
        meta=data._meta.astype(np.float64).reshape((0,) * (ndim + 1)),
        token="cubepipe-compress-metrics",
    )
    return scores, partials


def pca_reconstruct(scores: xr.DataArray, model: xr.Dataset) -> xr.DataArray:
    """Lazy reconstruction ``(..., band, y, x)`` float32 from ``scores``."""
    m = _model_arrays(model)
    axis = scores.get_axis_num("component")
    data = scores.data.rechunk({axis: -1})
    nb = m["w"].shape[1]
    chunks = tuple((nb,) if i == axis else c for i, c in enumerate(data.chunks))
    out = da.map_blocks(
        reconstruct_block,
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
        metric_block,
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
