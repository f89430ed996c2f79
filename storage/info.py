"""A summary of a store, read from its metadata only (``cubepipe info``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .dataset import describe_images
from .location import is_remote, local_path, remote_store
from .store import ATTR, _open_group, history, store_state

__all__ = ["FITTED_PREFIXES", "describe"]

#: Variables whose names start with these hold fitted models/statistics (DESIGN.md).
FITTED_PREFIXES = ("stats_", "pca_", "ae_", "vae_")


def _dir_bytes(path: Path | str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _codec_names(arr: zarr.Array) -> list[str]:
    names = []
    codecs = getattr(arr.metadata, "codecs", None)
    if codecs is None:  # zarr v2: filters and a compressor
        codecs = (*(arr.filters or ()), *(arr.compressors or ()))
    for codec in codecs:
        d: dict[str, Any] = (
            codec.to_dict() if hasattr(codec, "to_dict") else {"name": type(codec).__name__}
        )
        conf = d.get("configuration") or {}
        extra = ",".join(f"{k}={v}" for k, v in sorted(conf.items()) if k != "endian")
        names.append(f"{d.get('name')}({extra})" if extra else str(d.get("name")))
    return names


def _dim_names(arr: Any) -> list[str]:
    """Dimension names: zarr v3 metadata, or xarray's ``_ARRAY_DIMENSIONS`` attr (v2)."""
    names = getattr(arr.metadata, "dimension_names", None)
    if not names:
        names = arr.attrs.get("_ARRAY_DIMENSIONS")
    if not isinstance(names, list | tuple) or len(names) != arr.ndim:
        names = [f"dim_{i}" for i in range(arr.ndim)]
    return [str(n) for n in names]


def describe(path: str | Path) -> dict[str, Any]:
    """Describe the store at ``path`` as a JSON-ready dict.

    Keys: ``path``, ``state`` (``complete``/``incomplete``/``foreign``), ``complete``
    (bool, or None for stores not written by cubepipe), ``dims`` (name -> size),
    ``variables`` (name -> dims, shape, dtype, chunks, codecs, bytes_in_memory,
    bytes_on_disk, encoding attrs such as a recorded error bound), ``fitted`` (names of
    model/statistics variables), ``bytes_on_disk``, ``bytes_in_memory``, ``version``,
    ``history``, ``georef`` (``crs`` name, ``crs_wkt``, GDAL ``transform``; None if not
    georeferenced), ``images`` (image data sets: count, height/width ranges, padding; see
    :func:`~cubepipe.storage.dataset.describe_images`; None otherwise). Only metadata
    (and the small per-image size arrays) is read; this is cheap on any size of store.
    """
    remote = is_remote(path)
    p: Path | str = remote_store(str(path)) if remote else local_path(path, "a store")
    group = _open_group(p, mode="r")
    state = store_state(p)
    size = _remote_bytes if remote else _dir_bytes
    attrs = dict(group.attrs)
    dims: dict[str, int] = {}
    variables: dict[str, Any] = {}
    for name, arr in sorted(group.arrays()):
        var_dims = _dim_names(arr)
        for d, n in zip(var_dims, arr.shape, strict=True):
            dims[str(d)] = int(n)
        arr_attrs = dict(arr.attrs)
        variables[name] = {
            "dims": var_dims,
            "shape": list(arr.shape),
            "dtype": str(np.dtype(arr.dtype)),
            "chunks": list(arr.chunks),
            "codecs": _codec_names(arr),
            "bytes_in_memory": int(np.prod(arr.shape, dtype=np.int64)) * arr.dtype.itemsize,
            "bytes_on_disk": size(f"{p}/{name}"),
            "encoding": {
                k: _number(arr_attrs[k]) if k == "_FillValue" else arr_attrs[k]
                for k in (
                    "cubepipe_encoding",
                    "cubepipe_source_dtype",
                    "scale_factor",
                    "add_offset",
                    "_FillValue",
                    "max_abs_error",
                )
                if k in arr_attrs
            },
        }
    found = attrs.get(ATTR)
    meta = found if isinstance(found, dict) else {}
    return {
        "path": str(p),
        "state": state,
        "complete": None if state == "foreign" else state == "complete",
        "dims": dims,
        "variables": variables,
        "fitted": [n for n in variables if n.startswith(FITTED_PREFIXES)],
        "bytes_in_memory": sum(v["bytes_in_memory"] for v in variables.values()),
        "bytes_on_disk": size(str(p)),
        "version": meta.get("version"),
        "history": history(attrs),
        "images": describe_images(group),
        "georef": _georef(group),
    }


def _number(value: Any) -> Any:
    """A ``_FillValue`` as a number: xarray stores a float one in zarr v3 attrs as the
    base64 of its bytes (``AAAAAAAA+H8=`` is NaN); NaN and infinities as zarr v3 spells
    them in JSON (``"NaN"``, ``"Infinity"``, ``"-Infinity"``)."""
    if isinstance(value, str):
        import base64  # noqa: PLC0415
        import binascii  # noqa: PLC0415

        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return value
        if len(raw) not in (2, 4, 8):
            return value
        value = float(np.frombuffer(raw, dtype={2: "<f2", 4: "<f4", 8: "<f8"}[len(raw)])[0])
    if isinstance(value, float) and not np.isfinite(value):
        return "NaN" if np.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _georef(group: Any) -> dict[str, Any] | None:
    """The store's coordinate system and affine transform (its ``spatial_ref``
    variable, CF/GDAL conventions), or None if it is not georeferenced."""
    if "spatial_ref" not in group:
        return None
    attrs = dict(group["spatial_ref"].attrs)
    wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
    if not isinstance(wkt, str):
        return None
    name = None
    try:
        import rasterio.crs  # noqa: PLC0415  (optional: the `geo` extra)

        code = rasterio.crs.CRS.from_wkt(wkt).to_epsg()
        name = f"EPSG:{code}" if code else None
    except Exception:  # no rasterio, or a CRS it cannot name: the WKT's own name
        name = None
    if name is None:
        parts = wkt.split('"')
        name = parts[1] if len(parts) > 1 else wkt[:60]
    transform = attrs.get("GeoTransform")
    return {
        "crs": name,
        "crs_wkt": wkt,
        "transform": transform if isinstance(transform, str) else None,
    }


def _remote_bytes(url: str) -> int:
    """Bytes stored under ``url`` on object storage (one listing)."""
    from .remote import remote_fs  # noqa: PLC0415

    fs, root = remote_fs(url)
    return int(sum(fs.du(root, total=False).values())) if fs.exists(root) else 0
