"""Per-pixel spectral autoencoders (AE, VAE) as compression methods beside PCA.

Every pixel's spectrum is one sample: an MLP or a 1-D convolutional network over the
spectral axis maps its standardized ``band`` values to ``K`` latent values (the
``scores``) and back (:mod:`cubepipe.pipeline.compression.autoencoder.net`). Fitting reads the cube
once: the float64 per-band statistics and band co-moments (as PCA's fit) and a bounded
random sample of valid pixels (:mod:`cubepipe.pipeline.compression.autoencoder.sample`) in the same
pass. The network starts as the PCA of those co-moments (its nonlinear branches at zero)
and is trained on the sample with PyTorch (:mod:`cubepipe.pipeline.compression.autoencoder.torch_backend`),
early-stopped on held-out pixels. Encoding reads the cube once more, chunk by chunk,
writing ``scores(component, y, x)`` float32 and the reconstruction's RMSE, PSNR and
spectral angle (and, for a VAE, the mean KL divergence of the posteriors) in the same
pass. Peak memory is the sample plus a few chunks, whatever the cube's size.

The model is stored beside the scores as plain float64 variables (``<kind>_mean``,
``<kind>_scale``, ``<kind>_<layer>_weight``, ``<kind>_<layer>_bias``; ``kind`` is ``ae``
or ``vae``) and the network's JSON spec in the attrs of ``<kind>_mean``
(``cubepipe_model``), so encoding, decoding and reconstructing need neither PyTorch nor
anything but the store. Inference is NumPy or CuPy (the chunks' namespace), float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask
import numpy as np
import xarray as xr

from cubepipe.pipeline.compression.autoencoder.apply import (
    MODEL_ATTR,
    ae_project,
    ae_reconstruct,
    model_kind,
    summarize_ae_metrics,
)
from cubepipe.pipeline.compression.autoencoder.net import (
    ACTIVATIONS,
    ARCHITECTURES,
    FORMAT,
    KINDS,
    build_spec,
    init_params,
    param_dims,
    parametric_layers,
)
from cubepipe.pipeline.compression.autoencoder.sample import sample_pixels
from cubepipe.pipeline.cube import cube_and_valid
from cubepipe.pipeline.linalg import eigh
from cubepipe.pipeline.stats.fit import stats_from_packed
from cubepipe.pipeline.stats.moments import NFIELDS, band_moments
from cubepipe.pipeline.stats.standardize import transform_params
from cubepipe.storage.errors import InputError

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "KINDS",
    "MODEL_ATTR",
    "ae_project",
    "ae_reconstruct",
    "fit_autoencoder",
    "model_kind",
    "summarize_ae_metrics",
    "take_ae_model",
]

_MIN_HELDOUT = 10  # pixels held out to choose the epoch (10 % of the sample, at most 50 000)
_MIN_PIXELS = 10 * _MIN_HELDOUT
_LOGVAR_INIT = float(np.log(1e-4))  # initial VAE posterior variance (whitened latents)


def _pca_init(
    params: dict[str, np.ndarray],
    spec: dict[str, Any],
    packed: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    weights: np.ndarray,
) -> float:
    """Set the linear path to the whitened PCA of the standardized, weighted pixels and
    zero the last layer of the nonlinear branches: the network then *is* that PCA.
    Returns the covariance's condition number."""
    n = float(packed[0, NFIELDS])
    k = spec["components"]
    mz = (packed[:, NFIELDS + 1] - center) / scale  # all-valid pixels' mean, standardized
    cz = packed[:, NFIELDS + 2 :] / max(n - 1, 1) / np.outer(scale, scale)
    g = np.sqrt(weights)
    e = eigh(cz * np.outer(g, g))
    values = np.asarray(e.values)[:k]
    vectors = np.asarray(e.vectors)[:, :k]  # (band, K)
    vectors = vectors * np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(k)])
    lam = np.clip(values, max(float(values[0]), 1e-300) * 1e-12, None)
    enc = (vectors / np.sqrt(lam)).T * g  # (K, band): s = Lambda^-1/2 V^T G (z - mz)
    dec = (vectors * np.sqrt(lam)) / g[:, None]  # (band, K): z = mz + G^-1 V Lambda^1/2 s
    params["enc_skip_weight"] = enc.astype(np.float32)
    params["enc_skip_bias"] = (-enc @ mz).astype(np.float32)
    params["dec_skip_weight"] = dec.astype(np.float32)
    params["dec_skip_bias"] = mz.astype(np.float32)
    last = [lay["name"] for lay in spec["branches"]["decoder"] if "name" in lay][-1]
    for name in ("mu", "logvar", last):
        if f"{name}_weight" in params:
            params[f"{name}_weight"][...] = 0
            params[f"{name}_bias"][...] = _LOGVAR_INIT if name == "logvar" else 0
    return float(e.cond)


def fit_autoencoder(
    ds: xr.Dataset,
    *,
    n_components: int,
    kind: str = "ae",
    architecture: str = "mlp",
    hidden: Sequence[int] = (64, 32),
    activation: str = "silu",
    train_pixels: int = 200_000,
    seed: int = 0,
    init: str = "pca",
    epochs: int = 50,
    patience: int = 10,
    batch_size: int = 1024,
    learning_rate: float = 1e-3,
    beta: float = 1.0,
    standardize: bool = False,
    device: str = "cpu",
    variable: str = "cube",
    progress: Callable[[str], None] | None = None,
    split_every: int | None = None,
) -> tuple[xr.Dataset, xr.Dataset, dict[str, Any]]:
    """Fit a per-pixel spectral AE or VAE with a ``K``-wide bottleneck; one read of ``ds``.

    Parameters
    ----------
    ds
        Input with ``variable`` of dims ``(..., band, y, x)``; pixels with NaN in any band
        or ``mask`` False are left out.
    n_components
        Bottleneck width ``K`` (1 <= K <= band count).
    kind, architecture, hidden, activation
        ``ae`` or ``vae``; ``mlp`` or ``conv`` (1-D convolutions over the band axis);
        hidden layer widths; ``silu``, ``tanh`` or ``relu``.
    train_pixels, seed
        Size of the random pixel sample trained on (10 % of it, at most 50 000, held out
        for early stopping) and the seed of everything random (sample, initial weights,
        batch order, VAE noise). Same seed, same model on the CPU.
    init
        ``pca``: start from PCA (see :func:`_pca_init`); ``random``: PyTorch-style
        uniform initialisation of every layer.
    epochs, patience, batch_size, learning_rate, beta
        Adam training: at most ``epochs`` passes over the sample, stopped after
        ``patience`` epochs without a held-out gain over the best trained epoch (the
        learning rate halves after ``patience // 3``), keeping the best held-out epoch,
        the start included (see :mod:`~cubepipe.pipeline.compression.autoencoder.schedule`);
        ``beta`` weighs the VAE's KL.
    standardize
        Loss on z-scores (every band weighs the same). Default: squared error in data
        units (bands weigh by their variance), the error PCA and the RMSE measure.
    device
        ``cpu`` or ``gpu`` (trains with CUDA when PyTorch has it).
    progress
        Called with one line per epoch (and at start and end).

    Returns
    -------
    (model, stats, report)
        ``model``: the ``<kind>_*`` float64 variables (see module docstring), computed.
        ``stats``: ``stats_*`` per band of the same pass. ``report``: training summary.
    """
    say = progress or (lambda _: None)
    _check_options(kind, architecture, activation, init, hidden)
    cube, valid = cube_and_valid(ds, variable)
    nb = cube.sizes["band"]
    if not 1 <= n_components <= nb:
        raise InputError(
            f"--components must be between 1 and {nb} (the band count); got {n_components}"
        )
    if train_pixels < _MIN_PIXELS:
        raise InputError(
            f"--train-pixels must be at least {_MIN_PIXELS} (10 % are held out to choose the "
            f"epoch, at least {_MIN_HELDOUT}); got {train_pixels}"
        )
    axis = cube.get_axis_num("band")
    data = cube.data.rechunk({axis: -1})
    valid = None if valid is None else valid.rechunk(data.chunks)
    packed = band_moments(
        data,
        band_axis=axis,
        valid=valid,
        split_every=split_every,
        name="cubepipe-compress-fit",
        kind="comoments",
    )
    sample = sample_pixels(data, valid, band_axis=axis, n=train_pixels, seed=seed)
    # Unoptimised: array optimisation would inline the chunk reads into the moments'
    # tasks under new names, and the sample would read every chunk a second time.
    computed, (_, _, values) = dask.compute(packed, sample, optimize_graph=False)
    moments = np.asarray(computed.get() if hasattr(computed, "get") else computed)
    stats = stats_from_packed(moments[:, :NFIELDS], cube, variable)
    if values.shape[0] < _MIN_PIXELS:
        raise InputError(
            f"an autoencoder needs at least {_MIN_PIXELS} pixels valid in every band (10 % "
            f"are held out to choose the epoch, at least {_MIN_HELDOUT}); {variable!r} has "
            f"{values.shape[0]}: use --method pca on so few pixels"
        )
    center, scale = transform_params(stats, "zscore")
    z = ((values.astype(np.float64) - center) / scale).astype(np.float32)
    n_val = max(_MIN_HELDOUT, min(z.shape[0] // 10, 50_000))
    weights = np.ones(nb) if standardize else scale**2 / np.mean(scale**2)
    spec = build_spec(
        kind=kind,
        architecture=architecture,
        bands=nb,
        components=n_components,
        hidden=tuple(hidden),
        activation=activation,
    )
    params = init_params(spec, seed)
    cond = _pca_init(params, spec, moments, center, scale, weights) if init == "pca" else None
    from cubepipe.pipeline.compression.autoencoder.torch_backend import train_network  # noqa: PLC0415  (imports torch)

    params, report = train_network(
        spec,
        params,
        z[n_val:],
        z[:n_val],
        weights,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=patience,
        beta=beta,
        seed=seed,
        device=device,
        say=say,
        init=init,
    )
    spec.update(
        init=init,
        loss="standardized" if standardize else "data",
        seed=int(seed),
        n_samples=int(values.shape[0]),
        variable=variable,
    )
    if cond is not None:
        report["pca_covariance_condition"] = cond
    return _model_dataset(spec, params, center, scale, report), stats, report


def _check_options(
    kind: str, architecture: str, activation: str, init: str, hidden: Sequence[int]
) -> None:
    for what, value, allowed in (
        ("--method", kind, KINDS),
        ("--architecture", architecture, ARCHITECTURES),
        ("--activation", activation, ACTIVATIONS),
        ("--init", init, ("pca", "random")),
    ):
        if value not in allowed:
            raise InputError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    if not hidden or any(int(h) < 1 for h in hidden):
        raise InputError(f"--hidden must list positive layer widths, e.g. 64,32; got {hidden}")


def _model_dataset(
    spec: dict[str, Any],
    params: dict[str, np.ndarray],
    center: np.ndarray,
    scale: np.ndarray,
    report: dict[str, Any] | None,
) -> xr.Dataset:
    kind = spec["kind"]
    out = xr.Dataset(
        {
            f"{kind}_mean": ("band", np.asarray(center, np.float64)),
            f"{kind}_scale": ("band", np.asarray(scale, np.float64)),
        }
    )
    for layer in parametric_layers(spec):
        dims = param_dims(spec, layer)
        for part in ("weight", "bias"):
            key = f"{layer['name']}_{part}"
            out[f"{kind}_{key}"] = (dims[part], np.asarray(params[key], np.float64))
    out[f"{kind}_mean"].attrs[MODEL_ATTR] = spec
    if report is not None:
        out[f"{kind}_mean"].attrs["training"] = report
    return out


def take_ae_model(ds: xr.Dataset, *, where: str = "the input") -> xr.Dataset:
    """The ``<kind>_*`` model variables of ``ds`` (a store written by ``compress``),
    checked against their spec and loaded."""
    kind = model_kind(ds)
    if kind not in KINDS:
        raise InputError(
            f"{where} holds no fitted autoencoder (no ae_mean/vae_mean with a "
            f"{MODEL_ATTR} attr); pass a store written by `cubepipe compress --method ae|vae`"
        )
    spec = ds[f"{kind}_mean"].attrs[MODEL_ATTR]
    if spec.get("format") != FORMAT:
        raise InputError(f"{where}: autoencoder format {spec.get('format')!r} is not {FORMAT}")
    names = [f"{kind}_mean", f"{kind}_scale"] + [
        f"{kind}_{lay['name']}_{part}"
        for lay in parametric_layers(spec)
        for part in ("weight", "bias")
    ]
    missing = [v for v in names if v not in ds]
    if missing:
        raise InputError(f"{where}: the {kind} model is incomplete (missing {', '.join(missing)})")
    return ds[names].compute()
