"""Realistic synthetic signed-float cubes, generated lazily chunk by chunk.

Used by ``cubepipe demo``, the tests and the benchmarks where a cube of a given size is
needed. The cube looks like a standardized hyperspectral scene: a few smooth spatial
"abundance" fields mixed through smooth, partly negative spectra (so bands are strongly
correlated and a few principal components explain most variance), plus per-pixel noise
and a disc of invalid (NaN) pixels. Generation streams: peak memory is a few chunks,
whatever the cube's size.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from cubepipe.storage.layout import default_chunks

__all__ = ["SIZES", "make_cube"]

#: Named sizes (band, y, x): ``full`` is the users' 15-band 2500 x 2500 case.
SIZES: dict[str, tuple[int, int, int]] = {
    "small": (15, 200, 240),
    "medium": (15, 1000, 1000),
    "full": (15, 2500, 2500),
}

_N_SOURCES = 4  # latent spatial fields mixed into the bands
_N_WAVES = 5  # sinusoids per field


def _model(bands: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    wl = np.linspace(400.0, 2500.0, bands)
    centres = rng.uniform(400, 2500, size=(_N_SOURCES, 2))
    widths = rng.uniform(250, 700, size=(_N_SOURCES, 2))
    signs = np.array([1.0, -1.0])
    # Each spectrum: one positive and one negative Gaussian bump -> signed, smooth.
    spectra = np.stack(
        [
            sum(
                signs[j]
                * (1.0 - 0.4 * j)
                * np.exp(-0.5 * ((wl - centres[k, j]) / widths[k, j]) ** 2)
                for j in range(2)
            )
            for k in range(_N_SOURCES)
        ],
        axis=1,
    )  # (band, source)
    return {
        "wavelength": wl,
        "spectra": spectra * rng.uniform(0.6, 1.6, size=_N_SOURCES),
        "offset": rng.normal(0.0, 0.3, size=bands),
        "noise": rng.uniform(0.01, 0.05, size=bands),
        "freq": rng.uniform(0.5, 6.0, size=(_N_SOURCES, _N_WAVES, 2)),
        "phase": rng.uniform(0, 2 * np.pi, size=(_N_SOURCES, _N_WAVES)),
        "amp": rng.uniform(0.3, 1.0, size=(_N_SOURCES, _N_WAVES)),
    }


def _block(
    block_info: dict[Any, Any] | None = None,
    *,
    model: dict[str, np.ndarray],
    shape: tuple[int, int, int],
    seed: int,
    nan_disc: bool,
) -> np.ndarray:
    assert block_info is not None
    info = block_info[None]
    (b0, b1), (y0, y1), (x0, x1) = info["array-location"]
    _, ny, nx = shape
    y = (np.arange(y0, y1, dtype=np.float64) / max(ny, 1))[:, None]
    x = (np.arange(x0, x1, dtype=np.float64) / max(nx, 1))[None, :]
    fields = np.empty((_N_SOURCES, y1 - y0, x1 - x0))
    for k in range(_N_SOURCES):
        acc = np.zeros((y1 - y0, x1 - x0))
        for j in range(_N_WAVES):
            fy, fx = model["freq"][k, j]
            acc += model["amp"][k, j] * np.sin(2 * np.pi * (fy * y + fx * x) + model["phase"][k, j])
        fields[k] = acc
    mixed = np.tensordot(model["spectra"][b0:b1], fields, axes=(1, 0))
    mixed += model["offset"][b0:b1, None, None]
    rng = np.random.default_rng([seed, *info["chunk-location"]])
    mixed += rng.standard_normal(mixed.shape) * model["noise"][b0:b1, None, None]
    if nan_disc:
        cy, cx, r = 0.7 * ny, 0.3 * nx, 0.08 * min(ny, nx)
        yy = np.arange(y0, y1)[:, None]
        xx = np.arange(x0, x1)[None, :]
        mixed[:, (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = np.nan
    return mixed.astype(np.float32)


def make_cube(
    size: str | tuple[int, int, int] = "small",
    *,
    seed: int = 0,
    chunks: dict[str, int] | None = None,
    nan_disc: bool = True,
) -> xr.Dataset:
    """A lazily generated synthetic cube.

    Parameters
    ----------
    size
        A name from :data:`SIZES` or a ``(band, y, x)`` tuple.
    seed
        Everything (spectra, fields, noise) follows from it; the same seed and chunking
        give bit-identical data.
    chunks
        Dask chunking (default: the store's, band whole and 512 x 512).
    nan_disc
        Mark a disc of pixels invalid (NaN in every band), as real scenes have.

    Returns
    -------
    xarray.Dataset
        Variable ``cube`` of dims ``(band, y, x)``, float32, with coordinate
        ``wavelength`` (nm) over ``band``.
    """
    shape = SIZES[size] if isinstance(size, str) else tuple(int(s) for s in size)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"size must be one of {sorted(SIZES)} or (band, y, x); got {size!r}")
    bands, ny, nx = shape
    sizes = {"band": bands, "y": ny, "x": nx}
    c = default_chunks(sizes, 4, overrides=chunks)
    model = _model(bands, seed)
    data = da.map_blocks(
        _block,
        dtype=np.float32,
        chunks=da.core.normalize_chunks((c["band"], c["y"], c["x"]), shape),
        meta=np.empty((0, 0, 0), dtype=np.float32),
        token="cubepipe-synthetic",
        model=model,
        shape=(bands, ny, nx),
        seed=seed,
        nan_disc=nan_disc,
    )
    return xr.Dataset(
        {"cube": (("band", "y", "x"), data, {"long_name": "synthetic signed radiance"})},
        coords={
            "band": np.arange(bands),
            "wavelength": ("band", model["wavelength"], {"units": "nm"}),
        },
        attrs={"title": f"cubepipe synthetic cube {bands}x{ny}x{nx} (seed {seed})"},
    )
