"""Applying a stored spectral autoencoder chunk by chunk: encode, decode, measure.

The model is the ``<kind>_*`` variables :func:`cubepipe.pipeline.compression.autoencoder.fit.fit_autoencoder`
stores (``kind`` = ``ae`` or ``vae``): ``<kind>_mean`` / ``<kind>_scale`` (the
standardization, float64 over ``band``; ``<kind>_mean`` carries the network's JSON spec in
its attrs under ``cubepipe_model``) and ``<kind>_<layer>_weight`` / ``_bias``. The kernels
run :mod:`cubepipe.pipeline.compression.autoencoder.net`'s forward pass in the namespace of the chunks
(NumPy or CuPy) in float32, strip by strip so that memory does not grow with chunk size
(cache-sized strips on the CPU, see :data:`CPU_STRIP`); one task per chunk gives its
scores and its error partials. PyTorch is not needed (on the CPU it was no faster:
issue 19 item 7). Invalid pixels (NaN in any band, or ``mask`` False) give NaN scores
and NaN reconstructions and are left out of the metrics.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from cubepipe.pipeline.backend import (
    array_module,
    array_namespace,
    device_constant,
    device_task,
    is_device_array,
)
from cubepipe.pipeline.compression.autoencoder.net import (
    KINDS,
    augmented,
    decode_strip,
    encode_strip,
    inference_params,
    parametric_layers,
    strip_size,
)
from cubepipe.pipeline.compression.pca import split_pairs, summarize_metrics
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
        "infer": inference_params(spec, params),
        "mean": np.asarray(model[f"{kind}_mean"].values, dtype=np.float64),
        "scale": np.asarray(model[f"{kind}_scale"].values, dtype=np.float64),
    }


# -- chunk kernels ------------------------------------------------------------------------

#: Pixels per strip on the CPU: the widest float32 activations of a strip (64 x 4096 x 4 B
#: = 1 MiB for the default MLP) stay in the core's cache between the layers. Measured on
#: a 15 x 512^2 chunk, one BLAS thread, encode + metrics: 135 ms CPU at 4096 pixels, 155
#: at 2048 or 8192, 170 at 16384 and ~410 as one strip per chunk; a strip costs ~60
#: NumPy calls, ~2 % of its work. 4032 = 63 x 64 rather than 4096: a layer's output with
#: its row of ones, 65 x 4032 x 4 B, stays under 1 MiB, the mmap threshold the cubepipe
#: command fixes (pipeline/malloc.py), so it is reused from the heap instead of being
#: mapped and faulted in afresh for every strip. On the GPU the whole chunk is one strip
#: (up to :func:`strip_size`'s budget).
CPU_STRIP = 4032
_GPU_BUDGET = 512 * 2**20


def _rows(xp: Any, a: Any, axis: int) -> Any:
    return xp.reshape(xp.moveaxis(a, axis, 0), (a.shape[axis], -1))


def _unrows(xp: Any, rows: Any, like_shape: tuple[int, ...], axis: int) -> Any:
    shape = (rows.shape[0],) + tuple(n for i, n in enumerate(like_shape) if i != axis)
    return xp.moveaxis(xp.reshape(rows, shape), 0, axis)


class _Kernel:
    """The model where the chunk ``like`` lives: float32 parameters (SiLU-halved, with
    bias columns: see :func:`~cubepipe.pipeline.compression.autoencoder.net.inference_params`),
    the mean and scale ``(band, 1)`` in the working dtype (float64 for float64 chunks,
    else float32), and the strip width."""

    def __init__(self, like: Any, m: dict[str, Any]):
        self.xm = array_module(like)
        self.spec = m["spec"]
        self.p = {k: device_constant(like, v, np.float32) for k, v in m["infer"].items()}
        # float64 data keep float64 around the network; anything else works in float32
        self.work = np.float64 if like.dtype == np.float64 else np.float32
        mean, scale = np.asarray(m["mean"])[:, None], np.asarray(m["scale"])[:, None]
        self.mean = device_constant(like, mean, self.work)
        self.scale = device_constant(like, scale, self.work)
        self.inv_scale = device_constant(like, 1.0 / scale, self.work)
        self.k = self.spec["components"]
        gpu = is_device_array(like)
        self.step = strip_size(self.spec, _GPU_BUDGET) if gpu else CPU_STRIP

    def standardize(self, x: Any, valid: Any) -> tuple[Any, Any]:
        """float32 ``z = (x - mean) / scale`` of a strip ``x (band, n)`` (of dtype
        ``work``) with a last row of ones (``(band + 1, n)``, see
        :func:`~cubepipe.pipeline.compression.autoencoder.net.augmented`), 0 where a pixel
        is invalid, and the validity ``(n,)`` (no NaN in any band, ``valid`` all True)."""
        xm = self.xm
        nb = x.shape[0]
        z = xm.empty((nb + 1, x.shape[1]), dtype=xm.float32)
        if self.work == np.float32:
            body = xm.subtract(x, self.mean, out=z[:nb])
            body *= self.inv_scale
        else:
            body = z[:nb]
            body[...] = (x - self.mean) * self.inv_scale
        z[nb] = 1
        ok = ~xm.isnan(body.sum(axis=0))
        if valid is not None:
            ok &= valid.all(axis=0)
        xm.copyto(body, xm.float32(0), where=~ok[None, :])
        return z, ok

    def decode(self, s: Any, *, aug: bool = False) -> Any:
        """Data-unit reconstruction ``(band, n)`` (dtype ``work``) of finite latent
        values ``s`` (float32; ``aug``: with a last row of ones)."""
        xhat = decode_strip(self.xm, s, self.p, self.spec, aug=aug)
        if xhat.dtype != self.work:
            xhat = xhat.astype(self.work)
        xhat *= self.scale
        xhat += self.mean
        return xhat


def _strip_partials(xp: Any, xm: Any, x: Any, xhat: Any, ok: Any, kl: Any) -> Any:
    """``[sse, n_values, sam_sum, n_angles, min, max, kl_sum, n_pixels]`` (float64, where
    the data are) of the ``ok`` pixels of one strip: data ``x`` and its reconstruction
    ``xhat`` (``(band, n)``, the same dtype; ``xhat`` is overwritten by the error
    ``x - xhat``). The per-pixel sums over the bands are in that dtype (float32 for
    float32 data: see tests/pipeline/test_ae_apply.py for what that changes), everything
    after them float64."""
    f64 = xm.float64
    e = xm.subtract(x, xhat, out=xhat)
    xx = xm.einsum("bn,bn->n", x, x)
    xe = xm.einsum("bn,bn->n", x, e)
    ee = xm.einsum("bn,bn->n", e, e)
    sse, sam, nsam = error_sum_arrays(xp, xx.astype(f64), xe.astype(f64), ee.astype(f64), ok)
    npix = ok.sum(dtype=f64)
    lo = xm.where(ok, x.min(axis=0), xm.inf).min().astype(f64)
    hi = xm.where(ok, x.max(axis=0), -xm.inf).max().astype(f64)
    kls = xm.where(ok, kl, 0.0).sum(dtype=f64) if kl is not None else xm.zeros((), dtype=f64)
    return xm.stack([sse, npix * x.shape[0], sam, nsam, lo, hi, kls, npix])


def _combine(xm: Any, sums: list[Any]) -> Any:
    if not sums:
        return xm.asarray([0.0, 0.0, 0.0, 0.0, xm.inf, -xm.inf, 0.0, 0.0], dtype=xm.float64)
    table = xm.stack(sums, axis=0)
    return xm.concatenate(
        [
            table[:, :4].sum(axis=0),
            table[:, 4:5].min(axis=0),
            table[:, 5:6].max(axis=0),
            table[:, 6:].sum(axis=0),
        ]
    )


@device_task
def _encode_block(
    block: Any, *valid: Any, m: dict[str, Any], axis: int, ndim: int
) -> tuple[Any, Any]:
    """``(band, ...)`` -> the pair ``(scores, partials)``: ``(K [+1 KL for a VAE], ...)``
    float32, NaN where invalid, and the chunk's reconstruction-error partials ``(1, ...,
    8)`` (see :func:`_strip_partials`; decoded from the float32 scores as stored), from
    one look at the chunk, strip by strip."""
    xp = array_namespace(block)
    net = _Kernel(block, m)
    xm, k = net.xm, net.k
    x = _rows(xp, block, axis)
    v = _rows(xp, valid[0], axis) if valid else None
    width = k + (net.spec["kind"] == "vae")
    out = xm.empty((width, x.shape[1]), dtype=xm.float32)
    sums = []
    for a in range(0, x.shape[1], net.step):
        xs = x[:, a : a + net.step]
        if xs.dtype != net.work:
            xs = xs.astype(net.work)
        z, ok = net.standardize(xs, None if v is None else v[:, a : a + net.step])
        mu, kl = encode_strip(xm, z, net.p, net.spec, aug=True)
        sums.append(_strip_partials(xp, xm, xs, net.decode(mu, aug=True), ok, kl))
        xm.copyto(mu[:k], xm.float32(xm.nan), where=~ok[None, :])
        out[:k, a : a + net.step] = mu[:k]
        if kl is not None:
            out[k, a : a + net.step] = xm.where(ok, kl, xm.nan)
    partial = xp.reshape(_combine(xm, sums), (1,) * ndim + (_NPARTIAL,))
    return _unrows(xp, out, block.shape, axis), partial


@device_task
def _decode_block(scores: Any, *, m: dict[str, Any], axis: int) -> Any:
    """``(K, ...)`` scores -> ``(band, ...)`` float32 data units; NaN where any score is."""
    xp = array_namespace(scores)
    net = _Kernel(scores, m)
    xm = net.xm
    s = _rows(xp, scores, axis)
    out = xm.empty((net.spec["bands"], s.shape[1]), dtype=xm.float32)
    for a in range(0, s.shape[1], net.step):
        sa = augmented(xm, xm.asarray(s[:, a : a + net.step], dtype=xm.float32))
        bad = xm.isnan(sa.sum(axis=0))[None, :]
        xm.copyto(sa[:-1], xm.float32(0), where=bad)
        xhat = net.decode(sa, aug=True)
        xm.copyto(xhat, xm.nan, where=bad)
        out[:, a : a + net.step] = xhat
    return _unrows(xp, out, scores.shape, axis)


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
    ndim = data.ndim
    pairs = da.map_blocks(
        _encode_block,
        *args,
        m=m,
        axis=axis,
        ndim=ndim,
        chunks=tuple((width,) if i == axis else c for i, c in enumerate(data.chunks)),
        dtype=np.float32,
        meta=data._meta.astype(np.float32),
        token="cubepipe-compress-encode",
    )
    enc, partials = split_pairs(pairs, data, _NPARTIAL)
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
