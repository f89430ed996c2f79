"""Per-band statistics in one streaming pass, and their exchange formats.

:func:`fit_stats` reduces every dim but ``band`` (so image data sets and videos are
summarised over all images/frames) with the float64 Chan reduction of
:mod:`cubepipe.pipeline.stats.moments`, honouring NaN and the store's ``mask``. The result is a
Dataset of ``stats_*`` variables (DESIGN.md) that is saved beside the data and can be
re-applied to any other store or stream, or exchanged as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from cubepipe.pipeline.backend import Device, is_device_array, to_device, to_host
from cubepipe.pipeline.cube import cube_and_valid
from cubepipe.pipeline.stats.moments import M2, MAX, MEAN, MIN, N, band_moments
from cubepipe.storage.errors import InputError, NonFiniteError

__all__ = [
    "STAT_VARS",
    "fit_stats",
    "stats_from_json",
    "stats_from_packed",
    "stats_to_json",
    "take_stats",
]

STAT_VARS = ("stats_count", "stats_mean", "stats_std", "stats_min", "stats_max")


def fit_stats(
    ds: xr.Dataset,
    *,
    variable: str = "cube",
    split_every: int | None = None,
    device: Device | str | None = None,
) -> xr.Dataset:
    """Per-band count, mean, standard deviation, min and max, lazily, in one pass.

    Parameters
    ----------
    ds
        Dataset with ``variable`` of dims ``(..., band, y, x)`` (any dims, one ``band``);
        NaN values and pixels where ``ds["mask"]`` is False are left out.
    split_every
        Fan-in of the tree reduction (dask's default if None).
    device
        ``"cpu"``, ``"gpu"`` (or a :class:`~cubepipe.pipeline.backend.Device`): reduce the
        chunks there (each chunk's partial moments are computed on the device, only the
        merged ``(band, 5)`` result comes to the host); None: where the chunks are.

    Returns
    -------
    xarray.Dataset
        ``stats_count`` (int64) and ``stats_mean``, ``stats_std``, ``stats_min``,
        ``stats_max`` (float64), each over ``band``. Bands with no valid value have
        count 0 and NaN statistics.

    Notes
    -----
    ``std`` is the population standard deviation ``sqrt(m2 / n)`` (ddof = 0), the one
    z-scoring needs. Means agree with a float64 NumPy reference to ~1e-15 relative even on
    data with a large offset, because only centred sums are ever formed.
    """
    if device is not None:
        ds = to_device(ds, device)
    cube, valid = cube_and_valid(ds, variable)
    packed = band_moments(
        cube.data, band_axis=cube.get_axis_num("band"), valid=valid, split_every=split_every
    )
    return stats_from_packed(packed, cube, variable)


def stats_from_packed(packed: Any, cube: xr.DataArray, variable: str = "cube") -> xr.Dataset:
    """The ``stats_*`` Dataset from packed moments ``(band, 5)`` (NumPy: computed; dask:
    lazy), with the band coordinates of ``cube``. Moments computed on the GPU come to the
    host here: the statistics are a few numbers per band, read on the host."""
    if isinstance(packed, da.Array):
        packed = to_host(packed)
        fields = {
            name: da.map_blocks(
                _field,
                packed,
                field=name,
                drop_axis=1,
                dtype=np.int64 if name == "stats_count" else np.float64,
                meta=np.empty((0,), dtype=np.int64 if name == "stats_count" else np.float64),
                token=f"cubepipe-{name.replace('_', '-')}",
            )
            for name in STAT_VARS
        }
    else:
        packed = packed.get() if is_device_array(packed) else packed
        fields = {name: _field(packed, field=name) for name in STAT_VARS}
    coords = {k: v for k, v in cube.coords.items() if v.dims == ("band",)}
    out = xr.Dataset({k: ("band", v) for k, v in fields.items()}, coords=coords)
    out["stats_std"].attrs["ddof"] = 0
    out.attrs["stats_of"] = variable
    return out


def _field(packed: Any, *, field: str) -> Any:
    """One ``stats_*`` field (over band) from packed moments ``(band, 5)``."""
    n = packed[:, N]
    empty = n == 0
    bad = np.flatnonzero(~empty & ~np.isfinite(packed[:, MEAN]))
    if bad.size:
        raise NonFiniteError(
            f"band(s) {', '.join(map(str, bad[:10].tolist()))} hold +-inf values, which "
            "statistics (and standardization or PCA fitted on them) cannot use: the mean "
            "would be inf or NaN. Mark those values invalid (NaN, or the store's mask) "
            "before fitting"
        )
    if field == "stats_count":
        return n.astype(np.int64)
    if field == "stats_std":
        value = np.sqrt(packed[:, M2] / np.maximum(n, 1))
    else:
        value = packed[:, {"stats_mean": MEAN, "stats_min": MIN, "stats_max": MAX}[field]]
    return np.where(empty, np.nan, value)


def take_stats(source: xr.Dataset) -> xr.Dataset:
    """The ``stats_*`` variables of ``source`` (a fitted store/dataset), validated."""
    missing = [v for v in STAT_VARS if v not in source]
    if missing:
        raise InputError(
            f"no fitted statistics here (missing {', '.join(missing)}); "
            "run `cubepipe stats STORE` first or pass a JSON file from `cubepipe stats --json`"
        )
    return source[list(STAT_VARS)]


def stats_to_json(stats: xr.Dataset) -> dict[str, Any]:
    """A stable, JSON-ready form: ``{"variable", "ddof", "bands": [{band, wavelength?,
    count, mean, std, min, max}, ...]}``."""
    s = stats.compute()
    bands = []
    for i in range(s.sizes["band"]):
        row: dict[str, Any] = {"band": _plain(s["band"].values[i]) if "band" in s.coords else i}
        if "wavelength" in s.coords:
            row["wavelength"] = float(s["wavelength"].values[i])
        row["count"] = int(s["stats_count"].values[i])
        for k in ("mean", "std", "min", "max"):
            v = float(s[f"stats_{k}"].values[i])
            row[k] = None if np.isnan(v) else v
        bands.append(row)
    return {"variable": s.attrs.get("stats_of", "cube"), "ddof": 0, "bands": bands}


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def stats_from_json(path_or_dict: str | Path | dict[str, Any]) -> xr.Dataset:
    """Statistics from :func:`stats_to_json` output (a dict or a JSON file)."""
    where = str(path_or_dict) if not isinstance(path_or_dict, dict) else "statistics"
    try:
        d = (
            path_or_dict
            if isinstance(path_or_dict, dict)
            else json.loads(Path(path_or_dict).read_text())
        )
        rows = d["bands"]
        data = {
            "stats_count": np.array([r["count"] for r in rows], dtype=np.int64),
            **{
                f"stats_{k}": np.array(
                    [np.nan if r[k] is None else r[k] for r in rows], dtype=np.float64
                )
                for k in ("mean", "std", "min", "max")
            },
        }
        coords: dict[str, Any] = {"band": [r["band"] for r in rows]}
        if all("wavelength" in r for r in rows):
            coords["wavelength"] = ("band", np.array([r["wavelength"] for r in rows]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{where}: not a statistics JSON from `cubepipe stats --json` ({exc})"
        ) from exc
    out = xr.Dataset({k: ("band", v) for k, v in data.items()}, coords=coords)
    out.attrs["stats_of"] = d.get("variable", "cube")
    return out
