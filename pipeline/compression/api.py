"""Compression of the spectral axis as library calls (what ``cubepipe compress`` runs).

:func:`compress` fits PCA or an autoencoder over ``band`` (one read, computed at once) or
takes a model, and returns the output with lazy ``scores``; :func:`prepare_compress` keeps
the lazy reconstruction-error metrics beside it, so that one more read writes both
(:meth:`Compressed.write`); :func:`reconstruct` rebuilds the bands from the scores.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cubepipe.pipeline.backend import Device, resolve_device, to_device
from cubepipe.pipeline.compression.autoencoder.apply import (
    ae_project,
    ae_reconstruct,
    model_kind,
)
from cubepipe.pipeline.compression.pca import (
    MODEL_VARS,
    fit_pca,
    pca_encode,
    pca_reconstruct,
)
from cubepipe.pipeline.compression.result import Compressed
from cubepipe.storage import open_cube
from cubepipe.storage.errors import InputError
from cubepipe.storage.geo import carry_georef

__all__ = ["METHODS", "Compressed", "compress", "load_model", "prepare_compress", "reconstruct"]

#: The compression methods: principal components, autoencoder, variational autoencoder.
METHODS = ("pca", "ae", "vae")


def compress(
    ds: xr.Dataset,
    *,
    components: int | None = None,
    variance: float | None = None,
    method: str | None = None,
    model: xr.Dataset | str | Path | None = None,
    standardize: bool = False,
    whiten: bool = False,
    sample: float | None = None,
    seed: int = 0,
    device: Device | str | None = None,
    variable: str = "cube",
    progress: Callable[[str], None] | None = None,
    architecture: str = "mlp",
    hidden: Sequence[int] = (64, 32),
    activation: str = "silu",
    train_pixels: int = 200_000,
    init: str = "pca",
    epochs: int = 50,
    patience: int = 10,
    batch_size: int = 1024,
    learning_rate: float = 1e-3,
    beta: float = 1.0,
) -> xr.Dataset:
    """Compress the bands of every pixel of ``ds[variable]`` to ``K`` scores.

    Fits the model now (one read of the input, float64 statistics and co-moments) unless
    ``model`` is given, and returns the output lazily: writing it (or computing
    ``scores``) reads the input once more.

    Parameters
    ----------
    ds
        Input with ``variable`` of dims ``(..., band, y, x)``, any float or integer dtype;
        pixels with NaN in any band or ``mask`` False are left out of the fit and get NaN
        scores.
    components, variance
        PCA: exactly one, ``K`` (``1 <= K <= band``) or the explained-variance fraction
        ``0 < F < 1`` (the fewest components whose cumulative ratio exceeds it).
        Autoencoders: ``components``, the bottleneck width. Ignored with ``model``.
    method
        ``"pca"`` (default), ``"ae"`` or ``"vae"``; with ``model`` the model's kind
        decides, and a different ``method`` is an error.
    model
        A fitted model to apply instead of fitting: a Dataset holding its variables (e.g.
        an earlier output) or the path of a store written by ``compress``.
    standardize
        Fit on per-band z-scores (correlation PCA; the autoencoders' input scaling).
    whiten
        PCA: divide the scores by ``sqrt(explained_variance)`` (unit variance).
    sample, seed
        PCA: fit on a random fraction ``0 < sample <= 1`` of the chunks (only those are
        read); all pixels are projected. ``seed`` also seeds an autoencoder's sampling,
        initialisation and training.
    device
        ``"cpu"``, ``"gpu"``, ``"auto"`` or a :class:`~cubepipe.pipeline.backend.Device`:
        the chunks are moved there (NumPy or CuPy) before projecting, and an autoencoder
        trains there. None: they stay where they are.
    variable
        The data variable to compress.
    progress
        Called with one line per autoencoder training epoch.
    architecture, hidden, activation, train_pixels, init, epochs, patience, \
batch_size, learning_rate, beta
        Autoencoder options (see
        :func:`~cubepipe.pipeline.compression.autoencoder.fit.fit_autoencoder`); ignored by PCA.

    Returns
    -------
    xarray.Dataset
        What ``cubepipe compress`` writes: ``scores`` of dims ``(..., component, y, x)``
        float32 (lazy; NaN at invalid pixels; a VAE's latent means), the model variables
        (float64: ``pca_components (component, band)``, ``pca_mean``, ``pca_scale``,
        ``pca_explained_variance``, ... or ``<kind>_mean``, ``<kind>_scale``,
        ``<kind>_<layer>_weight``/``_bias``), the fit's ``stats_*`` over ``band`` (not for
        a sample fit or a given model), ``mask`` if ``ds`` has one, and ``ds.attrs``.
        The reconstruction error is not in it: use :func:`prepare_compress` to measure it
        in the same pass as the write.

    Raises
    ------
    InputError
        Options that contradict each other, ``K`` out of range, too few valid pixels, a
        model with another band count.

    Notes
    -----
    PCA: with the pixel mean ``mu``, the per-band scale ``s`` (the stds with
    ``standardize``, else 1) and the components ``W (K, band)`` (eigenvectors of the
    covariance, ``n - 1``, of ``(x - mu) / s``, largest ``|loading|`` positive), a pixel's
    scores are ``t = W ((x - mu) / s) / f`` with ``f = sqrt(explained_variance)`` when
    whitening, else 1; :func:`reconstruct` inverts it, ``x^ = s * (W^T (f t)) + mu``.

    References
    ----------
    .. [1] Jolliffe, I. T. and Cadima, J. (2016), "Principal component analysis: a review
       and recent developments", Phil. Trans. R. Soc. A 374: 20150202.
    """
    return _prepare(**locals()).dataset  # locals(): exactly the arguments, here


def prepare_compress(ds: xr.Dataset, **options: Any) -> Compressed:
    """:func:`compress` (same arguments), keeping the lazy error metrics beside the output.

    Returns
    -------
    Compressed
        ``.dataset`` (what :func:`compress` returns), ``.partials`` (lazy metric partials
        sharing the scores' reads), ``.write(path)`` (both in one pass),
        ``.metrics()``.

    Notes
    -----
    Over the pixels valid in the input and the reconstruction ``x^`` (from the float32
    scores): ``rmse = sqrt(sum (x - x^)^2 / n_values)``,
    ``psnr_db = 10 log10(data_range^2 / rmse^2)`` with ``data_range`` the input's
    max - min, and the mean spectral angle ``arccos(x . x^ / (|x| |x^|))``.
    """
    bound = inspect.signature(compress).bind(ds, **options)
    bound.apply_defaults()
    return _prepare(**bound.arguments)


def load_model(source: xr.Dataset | str | Path) -> xr.Dataset:
    """The fitted compression model held by a store (path) or Dataset, loaded.

    Returns
    -------
    xarray.Dataset
        PCA: the ``pca_*`` variables (float64); an autoencoder: its ``<kind>_*``
        variables, the network's spec in the attrs of ``<kind>_mean``. Its kind:
        :func:`~cubepipe.pipeline.compression.autoencoder.apply.model_kind`.
    """
    ds, where = _open(source, "the model dataset")
    kind = model_kind(ds)
    if kind in ("ae", "vae"):
        from cubepipe.pipeline.compression.autoencoder.fit import take_ae_model  # noqa: PLC0415

        return take_ae_model(ds, where=where)
    missing = [v for v in MODEL_VARS if v not in ds]
    if missing:
        raise InputError(
            f"{where} holds no fitted PCA model (missing {', '.join(missing)}) and no "
            "autoencoder (ae_*/vae_*); pass a store written by `cubepipe compress`"
        )
    return ds[list(MODEL_VARS)].compute()


def reconstruct(ds: xr.Dataset | str | Path, *, device: Device | str | None = None) -> xr.Dataset:
    """Rebuild the bands from the ``scores`` and the model of a :func:`compress` output.

    Parameters
    ----------
    ds
        A Dataset written by :func:`compress` (or the path of such a store): ``scores``
        ``(..., component, y, x)`` and the model variables.
    device
        Where the chunks are decoded (as in :func:`compress`); None: where they are.

    Returns
    -------
    xarray.Dataset
        ``cube`` of dims ``(..., band, y, x)`` float32 in data units (lazy; NaN where the
        scores are) with the band coordinates ``compress`` kept (``band``,
        ``wavelength``, ``fwhm``, ``band_name``, ...), ``mask`` if ``ds`` has one, the
        georeferencing (``spatial_ref``, ``y``/``x``) if ``ds`` has it, and ``ds.attrs``.

    Notes
    -----
    PCA: ``x^ = s * (W^T (f t)) + mu`` (see :func:`compress`), in float64, stored as
    float32; an autoencoder runs its decoder in float32 (NumPy or CuPy, no PyTorch).
    """
    data, where = _open(ds, "the dataset")
    if "scores" not in data:
        raise InputError(f"{where} has no 'scores': pass a store written by `cubepipe compress`")
    scores = data["scores"] if device is None else to_device(data["scores"], device)
    if model_kind(data) in ("ae", "vae"):
        from cubepipe.pipeline.compression.autoencoder.fit import take_ae_model  # noqa: PLC0415

        cube = ae_reconstruct(scores, take_ae_model(data, where=where))
    else:
        cube = pca_reconstruct(scores, data[[v for v in MODEL_VARS if v in data]])
    cube = cube.assign_coords(_band_coords(data))  # band, wavelength, fwhm, band_name, ...
    out = xr.Dataset({"cube": cube}, attrs=data.attrs)
    if "mask" in data:
        out["mask"] = data["mask"]
    return carry_georef(out, data)  # a georeferenced input gives a georeferenced output


def _band_coords(source: xr.Dataset | xr.DataArray) -> dict[str, xr.DataArray]:
    """The coordinates of ``source`` along ``band`` alone (``band``, ``wavelength``,
    ``fwhm``, ``band_name``, ...): what ``compress`` keeps beside its model and
    :func:`reconstruct` puts back on the bands."""
    return {str(k): c for k, c in source.coords.items() if c.dims == ("band",)}


def _open(source: xr.Dataset | str | Path, name: str) -> tuple[xr.Dataset, str]:
    """The Dataset (a path opened as a store) and how errors name it."""
    if isinstance(source, str | Path):
        return open_cube(source), str(source)
    return source, name


# -- the work ----------------------------------------------------------------------------


def _prepare(
    ds: xr.Dataset,
    *,
    components: int | None,
    variance: float | None,
    method: str | None,
    model: xr.Dataset | str | Path | None,
    standardize: bool,
    whiten: bool,
    sample: float | None,
    seed: int,
    device: Device | str | None,
    variable: str,
    progress: Callable[[str], None] | None,
    **ae: Any,
) -> Compressed:
    fitted = None
    if model is not None:
        fitted = load_model(model)
        kind = model_kind(fitted) or "pca"
        if method is not None and method != kind:
            where = model if isinstance(model, str | Path) else "the model dataset"
            raise InputError(
                f"--method {method} does not match the {kind} model stored in {where}; "
                "leave --method out to apply it"
            )
        method = kind
    method = method or "pca"
    _check(method, fitted is not None, components, variance, whiten, sample)
    dev = device if device is None or isinstance(device, Device) else resolve_device(device)
    data = ds if dev is None else to_device(ds, dev)  # the chunks, where they are encoded
    name = None if model is None else "(a Dataset)" if isinstance(model, xr.Dataset) else str(model)
    training: dict[str, Any] = {}
    stats: xr.Dataset | None = None
    if method == "pca":
        if fitted is None:
            fitted, stats = fit_pca(
                data,
                n_components=components,
                variance=variance,
                standardize=standardize,
                whiten=whiten,
                sample=sample,
                seed=seed,
                variable=variable,
            )
            if sample is not None:
                stats = None  # statistics of a sample are not the input's: not saved
        scores, partials = pca_encode(data, fitted, variable=variable)
        out = xr.Dataset({"scores": scores}, attrs=ds.attrs)
        out = out.merge(fitted.drop_vars("component"), compat="override", join="override")
        params: dict[str, Any] = {
            "method": method,
            "components": int(scores.sizes["component"]),
            "variance": variance,
            "standardize": standardize,
            "whiten": whiten,
            "model": name,
            "sample": sample,
            "seed": seed if sample is not None else None,
        }
    else:
        params = {"method": method, "components": None, "model": name}
        if fitted is None:
            from cubepipe.pipeline.compression.autoencoder.fit import fit_autoencoder  # noqa: PLC0415

            ae = {**ae, "seed": seed}
            fitted, stats, training = fit_autoencoder(
                ds,  # trained on host chunks (PyTorch takes the sample to ``device``)
                n_components=int(components or 0),  # not None: checked by _check
                kind=method,
                standardize=standardize,
                device=dev.name if dev is not None else _chunk_device(ds, variable),
                variable=variable,
                progress=progress,
                **ae,
            )
            params.update(standardize=standardize, **ae)
            params["hidden"] = [int(w) for w in ae["hidden"]]
        scores, partials = ae_project(data, fitted, variable=variable)
        params["components"] = int(scores.sizes["component"])
        out = xr.Dataset({"scores": scores}, attrs=ds.attrs)
        out = out.assign({v: fitted[v].variable for v in fitted.data_vars})
    if stats is not None:
        out = out.assign({k: ("band", stats[k].values) for k in stats.data_vars})
    if "mask" in ds:
        out["mask"] = ds["mask"]
    out = out.assign_coords(_band_coords(ds[variable]))  # wavelength etc., for reconstruct
    return Compressed(carry_georef(out, ds), partials, method, params, training)


def _check(
    method: str,
    fitted: bool,
    components: int | None,
    variance: float | None,
    whiten: bool,
    sample: float | None,
) -> None:
    """Refuse contradictory options before anything is read (messages name the CLI's
    options, which match the keyword arguments)."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if method == "pca":
        if not fitted and (components is None) == (variance is None):
            raise InputError("give exactly one of --components K or --variance F (or --model)")
        return
    if sample is not None:
        raise InputError("--sample applies to --method pca; use --train-pixels N")
    if fitted:
        return
    if variance is not None:
        raise InputError(
            f"--variance chooses K for PCA only; give --components K with --method {method}"
        )
    if components is None:
        raise InputError(f"give --components K (the bottleneck width) for --method {method}")
    if whiten:
        raise InputError(
            "--whiten applies to --method pca only (autoencoder latents start whitened)"
        )


def _chunk_device(ds: xr.Dataset, variable: str) -> str:
    """``"cpu"`` for NumPy chunks, ``"gpu"`` for CuPy chunks of ``ds[variable]``."""
    data = ds[variable].data
    return "cpu" if isinstance(getattr(data, "_meta", data), np.ndarray) else "gpu"
