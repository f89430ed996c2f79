"""``cubepipe report``: one self-contained HTML page describing a cube store.

The page holds, as far as the store has them: quick-looks and histograms of the bands
(or, for a ``compress`` output, of the component scores), the per-band statistics table,
the PCA scree plot, the reconstruction-error map, the provenance history and the store's
layout (:func:`cubepipe.storage.describe`). Images are PNGs embedded as base64 ``data:``
URIs and the CSS is inline: the file needs nothing else (no network, no scripts).

Reading the data: statistics come from the store's ``stats_*`` when they describe the
shown variable (``cubepipe stats`` was the last operation on it), else from one
:func:`~cubepipe.pipeline.stats.fit.fit_stats` pass. Histograms (float64 counts, chunk by
chunk), strided quick-looks (first image/frame) and the error map are then computed in a
single dask computation, so the cube is read at most twice and never loaded whole.

The reconstruction error needs the data that were compressed, which a ``compress``
store does not hold: pass it as ``original`` (a store, or a file ``ingest`` reads). It is
measured against the input the model was fitted on, in its units
(:mod:`~cubepipe.pipeline.report.error`: a raw ``original`` of a standardized input is
standardized with the statistics saved beside that input), so its RMSE over every valid
value is the one ``compress`` recorded; with the statistics, in raw units too. The map is
the per-pixel RMS over bands of (reconstruction - reference) at the quick-look's pixels;
the reconstruction is made from the store's scores and model (PCA or autoencoder), or is
the store's ``cube`` itself (e.g. a ``reconstruct`` output). Without ``original`` the
report shows the error metrics ``compress`` recorded (RMSE, PSNR, spectral angle) only.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from cubepipe.pipeline.report.error import error_parts, fit_input, reference, summarize
from cubepipe.pipeline.report.plots import (
    EmbeddedImage,
    error_scale,
    histogram_png,
    image_png,
    image_scale,
    render_page,
    scree_png,
)
from cubepipe.pipeline.stats.fit import STAT_VARS, fit_stats, take_stats
from cubepipe.pipeline.stats.standardize import METHOD_ATTR
from cubepipe.storage import (
    InputError,
    __version__,
    describe,
    history,
    open_cube,
    store_state,
)
from cubepipe.storage.export import main_variable

__all__ = ["band_histograms", "build_report"]

_CORE = ("y", "x")


def band_histograms(data: xr.DataArray, edges: np.ndarray, *, dim: str = "band") -> da.Array:
    """Lazy histogram counts of every ``dim`` slice of ``data``, chunk by chunk.

    Parameters
    ----------
    data
        Array with dim ``dim`` (any other dims, any chunking); NaN and ±inf are skipped.
    edges
        ``(n, bins + 1)`` uniform bin edges per slice (``n = data.sizes[dim]``). A value
        equal to the last edge counts in the last bin (as :func:`numpy.histogram`).

    Returns
    -------
    dask.array.Array
        ``(n, bins)`` float64 counts: per-chunk ``numpy.histogram`` counts summed over
        chunks (exact below 2**53 values per bin).
    """
    edges = np.asarray(edges, dtype=np.float64)
    arr = data.data if isinstance(data.data, da.Array) else da.asarray(data.data)
    axis = data.get_axis_num(dim)
    arr = arr.rechunk({axis: -1})
    n, bins = arr.shape[axis], edges.shape[1] - 1
    chunks = tuple((n,) if i == axis else (1,) * len(c) for i, c in enumerate(arr.chunks))
    parts = da.map_blocks(
        _histogram_block,
        arr,
        edges=edges,
        axis=axis,
        new_axis=arr.ndim,
        chunks=(*chunks, (bins,)),
        dtype=np.float64,
        meta=np.empty((0,) * (arr.ndim + 1), dtype=np.float64),
        token="cubepipe-report-histogram",
    )
    return parts.sum(axis=tuple(i for i in range(arr.ndim) if i != axis), dtype=np.float64)


def _histogram_block(block: Any, *, edges: np.ndarray, axis: int) -> np.ndarray:
    x = np.moveaxis(np.asarray(block), axis, 0).reshape(block.shape[axis], -1)
    out = np.zeros((x.shape[0], edges.shape[1] - 1), dtype=np.float64)
    for i, row in enumerate(x):
        row = row[np.isfinite(row)]
        rng = (edges[i, 0], edges[i, -1])
        out[i] = np.histogram(row, bins=out.shape[1], range=rng)[0]
    shape = [1] * block.ndim
    shape[axis] = x.shape[0]
    return out.reshape((*shape, out.shape[1]))


def _edges(lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    lo, hi = np.asarray(lo, dtype=np.float64).copy(), np.asarray(hi, dtype=np.float64).copy()
    bad = ~(np.isfinite(lo) & np.isfinite(hi))
    lo[bad], hi[bad] = 0.0, 1.0
    flat = ~(hi > lo)
    lo[flat], hi[flat] = lo[flat] - 0.5, hi[flat] + 0.5
    return np.linspace(lo, hi, bins + 1, axis=1)


def _pick_variable(ds: xr.Dataset, variable: str | None, store: Any) -> str:
    names = ", ".join(map(str, ds.data_vars))
    if variable is not None:
        if variable not in ds.data_vars:
            raise InputError(f"{store} has no variable {variable!r} (it has {names})")
        return variable
    return main_variable(ds, store)  # cube, scores, or the one (..., band, y, x) variable


def _channel_dim(var: xr.DataArray) -> str:
    for dim in ("band", "component"):
        if dim in var.dims and set(_CORE) <= set(var.dims):
            return dim
    raise InputError(f"variable {var.name!r} has dims {var.dims}; expected (..., band, y, x)")


def _saved_stats_describe(ds: xr.Dataset, name: str) -> bool:
    """True when the stats_* in ``ds`` are statistics of ``ds[name]`` itself."""
    if name != "cube" or METHOD_ATTR in ds[name].attrs:
        return False
    hist = history(ds)
    if not hist:
        return True  # a store from another tool: stats_* beside the cube describe it
    last = hist[-1]
    return last.get("op") == "stats" and (last.get("params") or {}).get("variable", name) == name


def _saved_stats_label(ds: xr.Dataset, name: str) -> str:
    if _saved_stats_describe(ds, name):
        return f"Per-band statistics of {name!r}, saved by `cubepipe stats`"
    if "scores" in ds and name == "scores":
        return "Per-band statistics of the compressed input, saved by `cubepipe compress`"
    if METHOD_ATTR in ds.get(name, xr.DataArray()).attrs:
        return "Statistics the data were standardized with (of the input), saved by standardize"
    return "Statistics saved in the store (of an earlier input: the store's history says which)"


def _as_band_dataset(ds: xr.Dataset, name: str, chan: str) -> xr.Dataset:
    var = ds[name] if chan == "band" else ds[name].rename({chan: "band"})
    out = xr.Dataset({name: var})
    if "mask" in ds and name != "mask":
        out["mask"] = ds["mask"]
    return out


def _open_original(path: str | Path) -> xr.Dataset:
    if store_state(path) in ("complete", "incomplete", "foreign"):
        return open_cube(path)
    if not Path(path).exists():
        raise InputError(f"--original {path}: no such store or file")
    from cubepipe.storage.ingest import open_input  # noqa: PLC0415

    return open_input(str(path))


def _spread(n: int, k: int) -> list[int]:
    """At most ``k`` indices spread evenly over ``range(n)``, first and last included."""
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(n, k))})


def _label(var: xr.DataArray, chan: str, i: int) -> str:
    text = f"{chan} {i}"
    if "wavelength" in var.coords and var["wavelength"].dims == (chan,):
        text += f" ({float(var['wavelength'].values[i]):g} nm)"
    return text


def _card(
    var: xr.DataArray,
    chan: str,
    i: int,
    look: np.ndarray,
    counts: np.ndarray,
    edges: np.ndarray,
    st: xr.Dataset,
) -> tuple[EmbeddedImage, EmbeddedImage]:
    """Quick-look and histogram of channel ``i``."""
    label = _label(var, chan, i)
    look = np.asarray(look, dtype=np.float64)
    scale = image_scale(look, has_negative=bool(st["stats_min"].values[i] < 0))
    attrs = {"cmap": scale.cmap, "vmin": repr(scale.vmin), "vmax": repr(scale.vmax)}
    if scale.vcenter is not None:
        attrs["vcenter"] = repr(scale.vcenter)
    band = chan == "band"
    return (
        EmbeddedImage(
            f"quick-look of {label}" if band else f"{label} image (scores)",
            image_png(look, scale, title=label),
            kind="quicklook" if band else "component",
            attrs=attrs,
        ),
        EmbeddedImage(
            f"histogram of {label}",
            histogram_png(counts, edges, title=f"{label}: {int(counts.sum())} values"),
            kind="histogram",
            attrs={
                "count": str(int(counts.sum())),
                "min": repr(float(edges[0])),
                "max": repr(float(edges[-1])),
            },
        ),
    )


def _scree(ds: xr.Dataset) -> EmbeddedImage | None:
    name = next((v for v in ("pca_spectrum", "pca_explained_variance") if v in ds), None)
    if name is None:
        return None
    spectrum = np.asarray(ds[name].values, dtype=np.float64)
    kept = int(ds.sizes.get("component", spectrum.size))
    return EmbeddedImage(
        "scree plot: explained variance ratio per component and cumulative",
        scree_png(spectrum, kept),
        kind="scree",
    )


def _error_image(err: np.ndarray, units: str) -> EmbeddedImage:
    err = np.asarray(err, dtype=np.float64)
    return EmbeddedImage(
        "reconstruction error map: RMS over bands per pixel",
        image_png(err, error_scale(err), title="RMS error over bands", label=units),
        kind="error-map",
        attrs={"rmse": repr(float(np.sqrt(np.nanmean(err * err)))), "units": units},
    )


def _fitted_units(ds: xr.Dataset) -> str:
    """The units of the error ``compress`` recorded (those of the data it read)."""
    fit = fit_input(ds)
    return "standardized units" if fit.standardized else "data units"


def build_report(
    store: str | Path,
    *,
    original: str | Path | None = None,
    variable: str | None = None,
    bins: int = 64,
    size: int = 256,
    max_bands: int = 16,
    title: str | None = None,
    allow_incomplete: bool = False,
) -> str:
    """The report of ``store`` as an HTML string (see the module docstring).

    Parameters
    ----------
    store
        A cube store; its main variable (``cube``, ``scores`` for a compress output,
        else its one ``(..., band|component, y, x)`` variable) is shown unless
        ``variable`` names another.
    original
        The data a ``compress``/``reconstruct`` store came from (raw, or the standardized
        store ``compress`` read): adds the RMSE and the error map.
    bins
        Histogram bins per band, spanning the band's min..max.
    size
        Longest side, in pixels, of quick-looks: the data are strided lazily by
        ``ceil(max(ny, nx) / size)`` before anything is read.
    max_bands
        Quick-looks and histograms of at most this many bands, spread evenly.
    """
    ds = open_cube(store, allow_incomplete=allow_incomplete)
    info = describe(store)
    fitted = [v for v in info["fitted"] if v in ds]
    ds = ds.assign(ds[fitted].compute().data_vars)  # the small models/statistics, read once
    ds = ds.assign_coords({k: c.compute() for k, c in ds.coords.items() if c.ndim <= 1})
    name = _pick_variable(ds, variable, store)
    chan = _channel_dim(ds[name])
    orig_ds = _open_original(original) if original is not None else None
    var = ds[name]
    if "mask" in ds and name != "mask" and set(ds["mask"].dims) <= set(var.dims):
        var = var.where(ds["mask"].astype(bool))
    lead = [d for d in var.dims if d not in (chan, *_CORE)]
    step = max(1, math.ceil(max(var.sizes["y"], var.sizes["x"]) / size))
    sel: dict[str, Any] = {d: 0 for d in lead} | {d: slice(None, None, step) for d in _CORE}
    shown = _spread(var.sizes[chan], max_bands)

    saved = all(v in ds for v in STAT_VARS)
    tables = [(_saved_stats_label(ds, name), take_stats(ds))] if saved else []
    if saved and _saved_stats_describe(ds, name):
        st = tables[0][1]
    else:
        st = fit_stats(_as_band_dataset(ds, name, chan), variable=name).compute()
        tables.append((f"Statistics of {name!r}, computed for this report", st))
    edges = _edges(st["stats_min"].values[shown], st["stats_max"].values[shown], bins)
    lazy = {
        "counts": band_histograms(var.isel({chan: shown}), edges, dim=chan),
        "looks": var.isel(sel).isel({chan: shown}).transpose(chan, *_CORE).data,
    }
    ref = None
    if orig_ds is not None:
        ref = reference(ds, orig_ds, str(original), store)
        lazy["error"] = error_parts(ds, name, chan, ref, sel, str(original))
    (done,) = dask.compute(lazy)

    cards = [
        _card(var, chan, i, np.asarray(done["looks"][j]), done["counts"][j], edges[j], st)
        for j, i in enumerate(shown)
    ]
    error = errors = None
    if ref is not None:
        error = _error_image(np.asarray(done["error"]["map"]), ref.units)
        errors = summarize(done["error"], ref)
    return render_page(
        title=title or f"cubepipe report: {Path(store).name}",
        info=info,
        variable=name,
        channel=chan,
        n_channels=int(var.sizes[chan]),
        lead={d: int(var.sizes[d]) for d in lead},
        step=step,
        cards=cards,
        scree=_scree(ds),
        error=error,
        errors=errors,
        fitted_units=_fitted_units(ds),
        original=None if original is None else str(original),
        tables=tables,
        generated=f"cubepipe {__version__}, {datetime.now(UTC).isoformat(timespec='seconds')}",
    )
