"""The report's reconstruction error: against the input the model was fitted on.

A ``compress`` output (or a ``reconstruct`` output) is compared with ``original`` in the
units the model was fitted in. When ``compress`` read a standardized store (``cubepipe
standardize``, then ``compress``: the demo's chain), those are standardized units, and a
raw ``original`` is first standardized with the statistics saved in that store (the
store ``compress`` read, named in the history), so the RMSE is the one ``compress``
recorded. With the statistics at hand, the error is also given in the raw data units:
an error ``e_b`` in band ``b`` (standardized units) is ``scale_b * e_b`` in data units,
``x = scale * z + center`` (``scale`` = std for zscore, max - min for minmax).

Over the pixels valid in every band of both the reconstruction and the reference (and
``mask``, where the store has one), as ``compress`` measures it:
``rmse = sqrt(sum_b sse_b / (n_pixels * bands))``,
``rmse_raw = sqrt(sum_b scale_b**2 sse_b / (n_pixels * bands))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from cubepipe.pipeline.compression.autoencoder.apply import ae_reconstruct, model_arrays, model_kind
from cubepipe.pipeline.compression.pca import MODEL_VARS, pca_reconstruct
from cubepipe.pipeline.stats.fit import STAT_VARS
from cubepipe.pipeline.stats.standardize import METHOD_ATTR, transform_params
from cubepipe.storage import InputError, history, open_cube, store_state

__all__ = [
    "ErrorSummary",
    "FitInput",
    "Reference",
    "error_parts",
    "fit_input",
    "reconstruction",
    "reference",
    "summarize",
]

_CORE = ("y", "x")


@dataclass(frozen=True)
class FitInput:
    """What the history says about the data ``compress`` read.

    ``standardized`` is None when the store has no ``compress`` entry (a store from
    another tool, or a plain cube): then nothing is known and ``original`` is taken as is.
    """

    standardized: bool | None
    path: str | None


@dataclass(frozen=True)
class Reference:
    """The data the reconstruction is compared with, in the model's units.

    Attributes
    ----------
    cube
        ``(..., band, y, x)`` float64, lazy, without coordinates.
    label
        What it is (for the page).
    units
        ``"data units"`` or ``"zscore-standardized units"``, ...
    raw_scale
        Per-band factor from the model's units to raw data units, when the model's units
        are standardized and the statistics are known; else None.
    raw_label
        What the raw-unit error is measured in.
    """

    cube: xr.DataArray
    label: str
    units: str
    raw_scale: np.ndarray | None = None
    raw_label: str | None = None


@dataclass(frozen=True)
class ErrorSummary:
    """The computed error: RMSE in the model's units and, when known, in raw units."""

    rmse: float
    n_values: int
    reference: Reference
    rmse_raw: float | None = None


def fit_input(ds: xr.Dataset) -> FitInput:
    """From ``ds``'s history: were the data its last ``compress`` read standardized (a
    ``standardize`` not undone by a ``destandardize`` before it), and their path."""
    hist = history(ds)
    at = [i for i, h in enumerate(hist) if h.get("op") == "compress"]
    if not at:
        return FitInput(None, None)
    inputs = hist[at[-1]].get("inputs") or []
    ops = [h.get("op") for h in hist[: at[-1]] if h.get("op") in ("standardize", "destandardize")]
    return FitInput(bool(ops) and ops[-1] == "standardize", str(inputs[0]) if inputs else None)


def _plain(var: xr.DataArray) -> xr.DataArray:
    """``var`` as float64 without coordinates (so arithmetic never aligns on them)."""
    return xr.DataArray(var.data, dims=var.dims).astype(np.float64)


def _per_band(values: np.ndarray) -> xr.DataArray:
    return xr.DataArray(np.asarray(values, dtype=np.float64), dims="band")


def _standardized_store(path: str | None, store: str | Path) -> tuple[xr.Dataset, str] | None:
    """The standardized store ``compress`` read (as recorded, else the store of that name
    beside ``store``), when it is there and holds its statistics; else None."""
    if path is None:
        return None
    tries = [path]
    if not Path(path).is_absolute() and "://" not in path:
        tries.append(str(Path(store).parent / Path(path).name))
    for p in tries:
        if store_state(p) != "complete":
            continue
        cand = open_cube(p)
        if "cube" in cand and METHOD_ATTR in cand["cube"].attrs and set(STAT_VARS) <= set(cand):
            return cand, p
    return None


def reference(ds: xr.Dataset, original: xr.Dataset, where: str, store: str | Path) -> Reference:
    """What the reconstruction in ``ds`` is compared with (see the module docstring).

    ``original`` is the dataset given as ``--original`` (``where``: its path).

    Raises
    ------
    InputError
        ``original`` has no ``cube``; or the model was fitted on standardized data,
        ``original`` is raw, and the statistics that standardized it cannot be found.
    """
    if "cube" not in original:
        raise InputError(f"--original {where}: it has no 'cube' variable to compare with")
    cube = original["cube"]
    fit = fit_input(ds)
    method = cube.attrs.get(METHOD_ATTR)
    if method:  # a standardized store: its own statistics undo the standardization
        center, scale = transform_params(original, method)
        if fit.standardized is False:  # ... and the model was fitted on raw data
            return Reference(
                _plain(cube) * _per_band(scale) + _per_band(center),
                f"{where} destandardized with its saved {method} statistics (the model was "
                f"fitted on data in data units{': ' + fit.path if fit.path else ''})",
                "data units",
            )
        return Reference(
            _plain(cube),
            f"{where}, the {method}-standardized cube the model was fitted on",
            f"{method}-standardized units",
            scale,
            f"data units (destandardized with the {method} statistics saved in {where})",
        )
    if not fit.standardized:
        read = f" (compress read {fit.path})" if fit.path and fit.path != where else ""
        return Reference(_plain(cube), f"{where}{read}", "data units")
    found = _standardized_store(fit.path, store)
    if found is None:
        raise InputError(
            f"the model in {store} was fitted on standardized data ({fit.path or 'unknown'}, "
            f"per its history), but --original {where} is in raw units and the statistics "
            "that standardized it cannot be read there; pass --original with that "
            "standardized store"
        )
    src, path = found
    method = src["cube"].attrs[METHOD_ATTR]
    center, scale = transform_params(src, method)
    return Reference(
        (_plain(cube) - _per_band(center)) / _per_band(scale),
        f"the {method}-standardized cube the model was fitted on ({path}): {where} "
        f"standardized with the statistics saved in {path}",
        f"{method}-standardized units",
        scale,
        f"data units of {where}",
    )


def reconstruction(ds: xr.Dataset, name: str, chan: str) -> xr.DataArray:
    """The reconstructed bands ``(..., band, y, x)``: ``ds[name]`` itself for a cube,
    else decoded from the scores with the model stored beside them (PCA or autoencoder)."""
    if chan == "band":
        return ds[name]
    kind = model_kind(ds)
    if kind is None:
        raise InputError(
            f"{name!r} has no compression model (pca_*, ae_*, vae_*) to reconstruct the bands from"
        )
    if kind == "pca":
        return pca_reconstruct(ds["scores"], ds[[v for v in MODEL_VARS if v in ds]])
    return ae_reconstruct(ds["scores"], ds)  # its decoder, from the arrays stored beside


def _bands(ds: xr.Dataset, name: str, chan: str) -> int:
    if chan == "band":
        return int(ds[name].sizes[chan])
    if model_kind(ds) == "pca":
        return int(ds["pca_components"].sizes["band"])
    return int(model_arrays(ds)["spec"]["bands"])


def error_parts(
    ds: xr.Dataset, name: str, chan: str, ref: Reference, sel: dict[str, Any], where: str
) -> dict[str, da.Array]:
    """Lazy ``sse`` per band, ``n`` valid pixels (every image/frame) and the per-pixel RMS
    map over bands at the quick-look's pixels ``sel``, in the model's units."""
    nb = _bands(ds, name, chan)
    want = {
        ("band" if d == chan else d): (nb if d == chan else n) for d, n in ds[name].sizes.items()
    }
    if dict(ref.cube.sizes) != want:
        raise InputError(
            f"--original {where}: its cube {dict(ref.cube.sizes)} does not match the "
            f"reconstruction {want}; pass the store or file that compress read"
        )
    recon = _plain(reconstruction(ds, name, chan))
    diff = recon - ref.cube.transpose(*recon.dims)
    valid = diff.notnull().all("band")
    if "mask" in ds and set(ds["mask"].dims) <= set(valid.dims):
        valid = valid & xr.DataArray(ds["mask"].data, dims=ds["mask"].dims).astype(bool)
    sq = (diff * diff).where(valid, 0.0)
    rest = [d for d in sq.dims if d != "band"]
    look = ((diff * diff).isel(sel).mean("band") ** 0.5).where(valid.isel(sel))
    return {
        "sse": sq.sum(rest).data,
        "n": valid.sum().data,
        "map": look.transpose(*_CORE).data,
    }


def summarize(parts: dict[str, Any], ref: Reference) -> ErrorSummary:
    """RMSEs from the computed :func:`error_parts`."""
    sse = np.asarray(parts["sse"], dtype=np.float64)
    n_values = int(parts["n"]) * sse.size
    rmse = float(np.sqrt(sse.sum() / n_values)) if n_values else float("nan")
    raw = None
    if ref.raw_scale is not None:
        s = np.asarray(ref.raw_scale, dtype=np.float64)
        raw = float(np.sqrt((s * s * sse).sum() / n_values)) if n_values else float("nan")
    return ErrorSummary(rmse, n_values, ref, raw)
