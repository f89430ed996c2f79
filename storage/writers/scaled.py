"""Scaled integer previews: PNG/JPEG files, each with its JSON sidecar.

One pass quantizes the selected bands (see :mod:`.scaling`) into a temporary ``.npy`` of
codes beside the output, counting NaN and clipped values per band; then the images are
written from it one at a time. Layout of the files:

- one band -> one grey image ``OUT``; exactly three bands -> one RGB preview ``OUT``
  (bands in the given order as R, G, B, one common scale);
- any other number of bands -> one grey image per band, ``STEM_bNN.SUFFIX`` (``NN`` the
  band's index in the store);
- stores with a leading ``image``/``frame`` dim -> the above for every image/frame,
  numbered ``STEM_frame0000[_bNN].SUFFIX`` (``image0000`` for image collections).

The scale is computed once over everything exported, so files are comparable. Each
sidecar's ``max_abs_error`` bounds ``|q * scale + offset - x|`` (float64) over the finite
values of its file, clipping included; ``clipped``/``infinite``/``nan_count`` count them.
JPEG is lossy: each file is read back and its largest code deviation (``jpeg_max_code_error``)
is added to the bound; pixels whose NaN mark (code 0) changed in compression are counted in
``nan_mismatches`` -- use PNG where NaN marks must be exact.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import CubepipeWarning
from ..sidecar import sidecar_path, write_sidecar
from ._staging import staging
from .image import jpeg_deviation, write_image
from .npy import write_npy
from .scaling import Quantizer, ScaleSpec, resolve_range

__all__ = ["ImagePlan", "export_images", "plan_images"]


@dataclass(frozen=True)
class ImagePlan:
    """One output image: its path, the leading index (or None) and the positions of its
    bands among the exported ones."""

    path: Path
    lead: int | None
    positions: tuple[int, ...]


def plan_images(
    out: Path, *, lead_dim: str | None, n_lead: int, bands: list[int]
) -> list[ImagePlan]:
    """The files written for ``bands`` (store indices), as the module docstring says."""
    rgb_or_grey = len(bands) in (1, 3)
    groups = [tuple(range(len(bands)))] if rgb_or_grey else [(i,) for i in range(len(bands))]
    plans = []
    for lead in range(n_lead) if lead_dim else [None]:
        for g in groups:
            parts = [out.stem]
            if lead is not None:
                parts.append(f"{lead_dim}{lead:04d}")
            if not rgb_or_grey:
                parts.append(f"b{bands[g[0]]:02d}")
            plans.append(ImagePlan(out.with_name("_".join(parts) + out.suffix), lead, g))
    return plans


def _reduce(stats: np.ndarray) -> np.ndarray:
    """Per-chunk ``Quantizer`` stats ``(..., band, ny, nx, 5)`` -> ``(..., band, 5)``."""
    sums = stats[..., :4].sum(axis=(-3, -2))
    excess = stats[..., 4:].max(axis=(-3, -2), initial=0.0)
    return np.concatenate([sums, excess], axis=-1)


def export_images(
    var: xr.DataArray,
    plans: list[ImagePlan],
    *,
    fmt: str,
    spec: ScaleSpec,
    bits: int,
    bands: list[int],
    source: str,
) -> dict[str, Any]:
    """Write ``var`` (``(..., band, y, x)``, bands already selected) as the scaled images
    ``plans`` (from :func:`plan_images`; the caller has checked they may be written).

    Returns a dict: ``files``, ``range``, ``scale``, ``offset``, ``max_abs_error``
    (largest over the files), ``clipped`` (total).
    """
    lead_dim = str(var.dims[0]) if var.ndim == 4 else None
    listed = ",".join(map(str, bands)) if len(bands) <= 8 else f"({len(bands)})"
    what = f"{source}:{var.name} bands {listed}"
    lo, hi = resolve_range(var.data, spec, what=what)
    qz = Quantizer(float(lo), float(hi), bits)
    files, errors, clipped = [], [], 0
    with staging() as st:
        codes_path = st.scratch(plans[0].path.with_suffix(".npy"), "codes")
        stats = _reduce(write_npy(var.data, codes_path, dtype=qz.dtype, convert=qz, k=qz.K))
        codes = np.load(codes_path, mmap_mode="r", allow_pickle=False)
        for pl in plans:
            sel = (pl.lead,) if pl.lead is not None else ()
            img = np.asarray(codes[sel + (list(pl.positions),)])
            img = img[0] if len(pl.positions) == 1 else np.moveaxis(img, 0, -1)
            s = stats[sel + (list(pl.positions),)]
            n_nan, below, above, n_inf = (int(v) for v in s[:, :4].sum(axis=0))
            error = qz.bound(float(s[:, 4].max(initial=0.0)))
            extra: dict[str, Any] = {}
            tmp = st.temp_name(pl.path)
            write_image(img, tmp, fmt=fmt)
            if fmt == "jpeg":
                dev, mismatches = jpeg_deviation(tmp, img, nan_value=qz.nan_value)
                error += dev * qz.scale
                extra = {"jpeg_max_code_error": dev, "nan_mismatches": mismatches}
            if lead_dim is not None:
                extra[lead_dim] = pl.lead
            # Registered before it is written, so that a failed write is cleaned up too.
            st.add(sidecar_path(tmp), sidecar_path(pl.path))
            write_sidecar(
                tmp,
                scale=qz.scale,
                offset=qz.offset,
                max_abs_error=error,
                bits=bits,
                bands=[bands[i] for i in pl.positions],
                nan_value=qz.nan_value,
                source=source,
                variable=str(var.name),
                method=str(spec),
                range=[qz.lo, qz.hi],
                clipped=below + above,
                clipped_below=below,
                clipped_above=above,
                infinite=n_inf,
                nan_count=n_nan,
                format=fmt,
                channels="rgb" if len(pl.positions) == 3 else "grey",
                **extra,
            )
            st.add(tmp, pl.path)
            files.append(pl.path)
            errors.append(error)
            clipped += below + above
        del codes
    if clipped:
        warnings.warn(
            f"{clipped} value(s) of {what} lay outside [{qz.lo:.6g}, {qz.hi:.6g}] "
            f"(--scale {spec}) and were clipped to the end codes; counts per file are in "
            "the sidecars",
            CubepipeWarning,
            stacklevel=3,
        )
    return {
        "files": files,
        "range": (qz.lo, qz.hi),
        "scale": qz.scale,
        "offset": qz.offset,
        "max_abs_error": max(errors, default=0.0),
        "clipped": clipped,
    }
