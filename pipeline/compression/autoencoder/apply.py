"""Applying a stored spectral autoencoder chunk by chunk: encode, decode, measure.

The model is the ``<kind>_*`` variables :func:`cubepipe.pipeline.compression.autoencoder.fit.fit_autoencoder`
stores (``kind`` = ``ae`` or ``vae``): ``<kind>_mean`` / ``<kind>_scale`` (the
standardization, float64 over ``band``; ``<kind>_mean`` carries the network's JSON spec in
its attrs under ``cubepipe_model``) and ``<kind>_<layer>_weight`` / ``_bias``. The kernels
run :mod:`cubepipe.pipeline.compression.autoencoder.net`'s forward pass in the namespace of the chunks
(NumPy or CuPy) in float32, strip by strip so that memory does not grow with chunk size;
PyTorch is not needed. Invalid pixels (NaN in any band, or ``mask`` False) give NaN scores
and NaN reconstructions and are left out of the metrics.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from cubepipe.pipeline.backend import array_namespace, device_constant, device_task
from cubepipe.pipeline.compression.autoencoder.net import (
    KINDS,
    decode_rows,
    encode_rows,
    parametric_layers,
    strip_size,
)
from cubepipe.pipeline.compression.pca import summarize_metrics
from cubepipe.pipeline.compression.pca_kernels import error_sum_arrays
from cubepipe.pipeline.cube import cube_and_valid
from cubepipe.storage.errors import InputError

__all__ = [
    "MODEL_ATTR",
    "ae_project",
    "ae_reconstruct",
    "model_arrays",
    "model_kind",
    "summarize_ae_metrics",
]

MODEL_ATTR = "cubepipe_model"
_NPARTIAL = 8  # metric partials per chunk (see _metric_block)


def model_kind(ds: xr.Dataset) -> str | None:
    """``"pca"``, ``"ae"`` or ``"vae"``: the fitted compression model ``ds`` holds, if any."""
    if "pca_components" in ds:
        return "pca"
    for kind in KINDS:
        if f"{kind}_mean" in ds and MODEL_ATTR in ds[f"{kind}_mean"].attrs:
            return kind
    return None


def model_arrays(model: xr.Dataset) -> dict[str, Any]:
    """What the block kernels need: the spec, float32 parameters, float64 mean/scale."""
    kind = model_kind(model)
    if kind not in KINDS:
        raise InputError("not a fitted autoencoder model (no ae_mean/vae_mean with its spec)")
    spec = model[f"{kind}_mean"].attrs[MODEL_ATTR]
    params = {
        f"{lay['name']}_{part}": np.asarray(
            model[f"{kind}_{lay['name']}_{part}"].values, dtype=np.float32
        )
        for lay in parametric_layers(spec)
        for part in ("weight", "bias")
    }
    return {
        "spec": spec,
        "params": params,
        "mean": np.asarray(model[f"{kind}_mean"].values, dtype=np.float64),
        "scale": np.asarray(model[f"{kind}_scale"].values, dtype=np.float64),
    }


# -- chunk kernels ------------------------------------------------------------------------


def _rows(xp: Any, a: Any, axis: int) -> Any:
    return xp.reshape(xp.moveaxis(a, axis, 0), (a.shape[axis], -1))


def _unrows(xp: Any, rows: Any, like_shape: tuple[int, ...], axis: int) -> Any:
    shape = (rows.shape[0],) + tuple(n for i, n in enumerate(like_shape) if i != axis)
    return xp.moveaxis(xp.reshape(rows, shape), 0, axis)


def _device_params(like: Any, m: dict[str, Any]) -> dict[str, Any]:
    """The network's weights where ``like`` lives (on the GPU uploaded once per process)."""
    return {k: device_constant(like, v, np.float32) for k, v in m["params"].items()}


def _centre(like: Any, m: dict[str, Any]) -> tuple[Any, Any]:
    """The model's per-band mean and scale ``(B, 1)``, float64, where ``like`` lives."""
    return (
        device_constant(like, np.asarray(m["mean"])[:, None]),
        device_constant(like, np.asarray(m["scale"])[:, None]),
    )


@device_task
def _encode_block(block: Any, *valid: Any, m: dict[str, Any], axis: int) -> Any:
    """``(band, ...)`` -> ``(K [+1 KL for a VAE], ...)`` float32; NaN where invalid."""
    xp = array_namespace(block)
    spec = m["spec"]
    p = _device_params(block, m)
    x = _rows(xp, block, axis)
    v = _rows(xp, valid[0], axis) if valid else None
    mean, scale = _centre(block, m)
    k = spec["components"]
    width = k + (spec["kind"] == "vae")
    out = xp.empty((width, x.shape[1]), dtype=xp.float32)
    step = strip_size(spec)
    for a in range(0, x.shape[1], step):
        z = (xp.astype(x[:, a : a + step], xp.float64) - mean) / scale
        ok = ~xp.any(xp.isnan(z), axis=0)
        if v is not None:
            ok = ok & xp.all(xp.astype(v[:, a : a + step], xp.bool), axis=0)
        z = xp.astype(xp.where(ok[None, :], z, 0.0), xp.float32)
        mu, kl = encode_rows(xp, z, p, spec)
        out[:k, a : a + step] = xp.where(ok[None, :], mu, xp.nan)
        if kl is not None:
            out[k, a : a + step] = xp.where(ok, kl, xp.nan)
    return _unrows(xp, out, block.shape, axis)


def _decode_strip(xp: Any, s: Any, p: dict[str, Any], m: dict[str, Any]) -> tuple[Any, Any]:
    """float64 data-unit reconstruction of latent strip ``s (K, n)`` and its validity."""
    ok = ~xp.any(xp.isnan(s), axis=0)
    s = xp.where(ok[None, :], s, 0.0)
    zhat = xp.astype(decode_rows(xp, xp.astype(s, xp.float32), p, m["spec"]), xp.float64)
    mean, scale = _centre(s, m)
    return zhat * scale + mean, ok


@device_task
def _decode_block(scores: Any, *, m: dict[str, Any], axis: int) -> Any:
    xp = array_namespace(scores)
    p = _device_params(scores, m)
    s = _rows(xp, scores, axis)
    nb = m["spec"]["bands"]
    out = xp.empty((nb, s.shape[1]), dtype=xp.float32)
    step = strip_size(m["spec"])
    for a in range(0, s.shape[1], step):
        xhat, ok = _decode_strip(xp, s[:, a : a + step], p, m)
        out[:, a : a + step] = xp.astype(xp.where(ok[None, :], xhat, xp.nan), xp.float32)
    return _unrows(xp, out, scores.shape, axis)


@device_task
def _metric_block(x: Any, enc: Any, *, m: dict[str, Any], axis: int, ndim: int) -> Any:
    """Partials ``[sse, n_values, sam_sum, n_angles, min, max, kl_sum, n_pixels]`` of one
    chunk (the first six as :func:`cubepipe.pipeline.compression.pca.reconstruction_metrics`).

    Strip by strip (the decoder's activations are per pixel), invalid pixels masked out
    by ``where``; each strip's sums stay arrays where the data are, so on the GPU a chunk
    makes no host sync (its partial is one device array)."""
    xp = array_namespace(x)
    f64 = xp.float64
    p = _device_params(x, m)
    rows, erows = _rows(xp, x, axis), _rows(xp, enc, axis)
    k = m["spec"]["components"]
    nb = rows.shape[0]
    sums: list[Any] = []
    step = strip_size(m["spec"])
    for a in range(0, rows.shape[1], step):
        xhat, ok = _decode_strip(xp, erows[:k, a : a + step], p, m)
        xv = xp.astype(rows[:, a : a + step], f64)
        ok = ok & ~xp.any(xp.isnan(xv), axis=0)
        xz = xp.where(ok[None, :], xv, 0.0)
        e = xp.where(ok[None, :], xv - xhat, 0.0)
        sse, sam, nsam = error_sum_arrays(
            xp, xp.sum(xz * xz, axis=0), xp.sum(xz * e, axis=0), xp.sum(e * e, axis=0), ok
        )
        npix = xp.sum(xp.astype(ok, f64))
        kl = (
            xp.sum(xp.where(ok, xp.astype(erows[k, a : a + step], f64), 0.0))
            if erows.shape[0] > k
            else xp.zeros((), dtype=f64)
        )
        lo = xp.min(xp.where(ok[None, :], xv, xp.inf))
        hi = xp.max(xp.where(ok[None, :], xv, -xp.inf))
        sums.append(xp.stack([sse, npix * nb, sam, nsam, lo, hi, kl, npix]))
    if not sums:
        acc = xp.asarray([0.0, 0.0, 0.0, 0.0, xp.inf, -xp.inf, 0.0, 0.0], dtype=f64)
    else:
        table = xp.stack(sums, axis=0)
        acc = xp.concat(
            [
                xp.sum(table[:, :4], axis=0),
                xp.min(table[:, 4:5], axis=0),
                xp.max(table[:, 5:6], axis=0),
                xp.sum(table[:, 6:], axis=0),
            ]
        )
    return xp.reshape(acc, (1,) * ndim + (_NPARTIAL,))


# -- lazy whole-cube operations ------------------------------------------------------------


def ae_project(
    ds: xr.Dataset, model: xr.Dataset, *, variable: str = "cube"
) -> tuple[xr.DataArray, da.Array]:
    """Lazy ``scores (..., component, y, x)`` float32 (a VAE's latent means; NaN where the
    input pixel is invalid) and the per-chunk partials of the reconstruction error,
    sharing one encoding of every chunk (see :func:`summarize_ae_metrics`)."""
    cube, valid = cube_and_valid(ds, variable)
    m = model_arrays(model)
    spec = m["spec"]
    if spec["bands"] != cube.sizes["band"]:
        raise InputError(
            f"the {spec['kind']} model has {spec['bands']} bands but {variable!r} has "
            f"{cube.sizes['band']}"
        )
    axis = cube.get_axis_num("band")
    data = cube.data.rechunk({axis: -1})
    args = [data] if valid is None else [data, valid.rechunk(data.chunks)]
    k = spec["components"]
    width = k + (spec["kind"] == "vae")
    enc = da.map_blocks(
        _encode_block,
        *args,
        m=m,
        axis=axis,
        chunks=tuple((width,) if i == axis else c for i, c in enumerate(data.chunks)),
        dtype=np.float32,
        meta=data._meta.astype(np.float32),
        token="cubepipe-compress-encode",
    )
    ndim = data.ndim
    partials = da.map_blocks(
        _metric_block,
        data,
        enc,
        m=m,
        axis=axis,
        ndim=ndim,
        new_axis=ndim,
        chunks=tuple((1,) * len(c) for c in data.chunks) + ((_NPARTIAL,),),
        dtype=np.float64,
        meta=data._meta.astype(np.float64).reshape((0,) * (ndim + 1)),
        token="cubepipe-compress-metrics",
    )
    scores = enc[tuple(slice(0, k) if i == axis else slice(None) for i in range(ndim))]
    dims = tuple("component" if d == "band" else d for d in cube.dims)
    return xr.DataArray(scores, dims=dims, coords={"component": np.arange(k)}), partials


def ae_reconstruct(scores: xr.DataArray, model: xr.Dataset) -> xr.DataArray:
    """Lazy reconstruction ``(..., band, y, x)`` float32 (data units) from ``scores``."""
    m = model_arrays(model)
    axis = scores.get_axis_num("component")
    if scores.sizes["component"] != m["spec"]["components"]:
        raise InputError(
            f"the scores have {scores.sizes['component']} components but the model "
            f"{m['spec']['components']}"
        )
    data = scores.data.rechunk({axis: -1})
    nb = m["spec"]["bands"]
    out = da.map_blocks(
        _decode_block,
        data,
        m=m,
        axis=axis,
        chunks=tuple((nb,) if i == axis else c for i, c in enumerate(data.chunks)),
        dtype=np.float32,
        meta=data._meta.astype(np.float32),
        token="cubepipe-reconstruct",
    )
    dims = tuple("band" if d == "component" else d for d in scores.dims)
    return xr.DataArray(out, dims=dims)


def summarize_ae_metrics(partials: Any, *, kind: str = "ae") -> dict[str, float]:
    """RMSE, PSNR, mean spectral angle (as :func:`~cubepipe.pipeline.compression.pca.summarize_metrics`)
    and, for a VAE, ``kl_nats``: the mean KL divergence per valid pixel."""
    p = np.asarray(partials.get() if hasattr(partials, "get") else partials)
    p = p.reshape(-1, _NPARTIAL)
    out = summarize_metrics(p[:, :6])
    if kind == "vae":
        npix = float(p[:, 7].sum())
        out["kl_nats"] = float(p[:, 6].sum() / npix) if npix else float("nan")
    return out
