"""No operation writes into its input arrays.

Inputs are writeable NumPy arrays given to ``dask.array.from_array`` so that every chunk
a kernel receives is a view of them (:func:`_lazy`), and a kernel working in place would
change them; each operation is run and computed, then every input is compared with the
copy taken before (same dtype, same values, NaN in the same places, same bytes).
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from cubepipe.pipeline.compression.pca import fit_pca, pca_encode, pca_project, pca_reconstruct
from cubepipe.pipeline.filters import filter_cube
from cubepipe.pipeline.stats.fit import STAT_VARS, fit_stats
from cubepipe.pipeline.stats.standardize import destandardize, standardize

SHAPE = (4, 30, 40)
CHUNKS = (4, 16, 16)
DTYPES = [np.float32, np.float64]


def _data(dtype) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = (100.0 + rng.normal(0, 3, size=SHAPE)).astype(dtype)
    a[1, 4:7, 5:9] = np.nan  # NaN in one band
    a[:, 20:23, 30:33] = np.nan  # and in every band of some pixels
    mask = np.ones(SHAPE[1:], bool)
    mask[:, :3] = False
    return a, mask


class Inputs:
    """Writeable arrays and their copies taken before any operation."""

    def __init__(self, **arrays: np.ndarray) -> None:
        self.arrays = arrays
        for name, arr in arrays.items():
            assert arr.flags.writeable and arr.flags.owndata, name
        self.before = {k: v.copy() for k, v in arrays.items()}

    def assert_unchanged(self) -> None:
        for name, arr in self.arrays.items():
            old = self.before[name]
            assert arr.dtype == old.dtype, name
            np.testing.assert_array_equal(arr, old, err_msg=name)  # NaN where it was
            assert arr.tobytes() == old.tobytes(), name


class _Views:
    """An array-like whose slices are views of ``a``: ``dask.array.from_array`` copies a
    NumPy array (dask >= 2024.12) but reads any other array-like chunk by chunk."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim

    def __getitem__(self, idx):
        view = self.a[idx]
        assert view.base is self.a or view is self.a  # a view, not a copy
        return view


def _lazy(a: np.ndarray, chunks: tuple[int, ...]) -> da.Array:
    out = da.from_array(_Views(a), chunks=chunks, meta=np.empty((0,) * a.ndim, a.dtype))
    shared = out.map_blocks(
        lambda b: np.full((1,) * b.ndim, np.shares_memory(b, a)),
        chunks=tuple((1,) * len(c) for c in out.chunks),
        dtype=bool,
    ).compute(scheduler="sync")
    assert shared.all()  # every chunk is a view: in-place writes would show
    return out


def _ds(a: np.ndarray, mask: np.ndarray | None = None, chunks=CHUNKS) -> xr.Dataset:
    ds = xr.Dataset({"cube": (("band", "y", "x"), _lazy(a, chunks))})
    if mask is not None:
        ds["mask"] = (("y", "x"), _lazy(mask, chunks[1:]))
    return ds


def _stats_dataset(a: np.ndarray) -> xr.Dataset:
    """Statistics as writeable NumPy arrays (by NumPy, not by cubepipe)."""
    v = a.astype(np.float64)
    return xr.Dataset(
        {
            "stats_count": ("band", np.sum(~np.isnan(v), axis=(1, 2)).astype(np.int64)),
            "stats_mean": ("band", np.nanmean(v, axis=(1, 2))),
            "stats_std": ("band", np.nanstd(v, axis=(1, 2))),
            "stats_min": ("band", np.nanmin(v, axis=(1, 2))),
            "stats_max": ("band", np.nanmax(v, axis=(1, 2))),
        }
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
def test_stats_and_standardize_leave_their_inputs_alone(dtype, masked: bool) -> None:
    a, mask = _data(dtype)
    stats = _stats_dataset(a)
    inputs = Inputs(a=a, mask=mask, **{k: stats[k].values for k in STAT_VARS})
    ds = _ds(a, mask if masked else None)
    fit_stats(ds).compute()
    inputs.assert_unchanged()
    standardize(ds).compute()  # statistics fitted here
    inputs.assert_unchanged()
    standardize(ds, stats).compute()  # statistics given
    inputs.assert_unchanged()
    standardize(ds, stats, method="minmax").compute()
    inputs.assert_unchanged()


@pytest.mark.parametrize("method", ["zscore", "minmax"])
def test_destandardize_leaves_its_input_alone(method: str) -> None:
    a, mask = _data(np.float32)
    z = standardize(_ds(a, mask), method=method).compute()
    zs = np.array(z["cube"].values)  # writeable copies of the standardized store's arrays
    stats = {k: np.array(z[k].values) for k in STAT_VARS}
    m = np.array(mask)
    inputs = Inputs(z=zs, mask=m, **stats)
    ds = xr.Dataset(
        {
            "cube": (("band", "y", "x"), _lazy(zs, CHUNKS), z["cube"].attrs),
            "mask": (("y", "x"), _lazy(m, CHUNKS[1:])),
            **{k: ("band", v) for k, v in stats.items()},
        }
    )
    destandardize(ds).compute()
    inputs.assert_unchanged()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scaled", [False, True])
def test_pca_fit_encode_project_reconstruct_leave_their_inputs_alone(
    dtype,
    scaled: bool,
) -> None:
    a, mask = _data(dtype)
    inputs = Inputs(a=a, mask=mask)
    ds = _ds(a, mask)
    model, stats = fit_pca(ds, n_components=2, standardize=scaled, whiten=scaled)
    model, stats = dask.compute(model, stats)
    inputs.assert_unchanged()

    # The model as writeable NumPy arrays: applying it must not change it either.
    model = model.copy(deep=True)
    held = {k: v.values for k, v in model.data_vars.items() if v.dtype.kind == "f"}
    for v in held.values():
        v.flags.writeable = True
    model_inputs = Inputs(**{k: v for k, v in held.items() if v.flags.owndata})
    scores, partials = pca_encode(ds, model)
    scores_np, _ = dask.compute(scores.data, partials)
    pca_project(ds, model).compute()
    inputs.assert_unchanged()
    model_inputs.assert_unchanged()

    s = np.array(scores_np)
    score_inputs = Inputs(s=s)
    given = xr.DataArray(_lazy(s, (2, 16, 16)), dims=scores.dims, coords=scores.coords)
    pca_reconstruct(given, model).compute()
    score_inputs.assert_unchanged()
    model_inputs.assert_unchanged()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize(
    "how",
    ["plain", "mask", "mask_nan", "mask_nan_fill", "spectral"],
)
@pytest.mark.parametrize("chunks", [CHUNKS, SHAPE], ids=["chunked", "one-chunk"])
def test_filter_leaves_its_input_alone(dtype, method: str, how: str, chunks) -> None:
    a, mask = _data(dtype)
    inputs = Inputs(a=a, mask=mask)
    ds = _ds(a, mask if how == "mask" else None, chunks)  # one chunk: no halo copies
    opts = {
        "plain": {},
        "mask": {},
        "mask_nan": {"mask_nan": True},
        "mask_nan_fill": {"mask_nan": True, "fill": True},
        "spectral": {"axis": "spectral"},
    }[how]
    for kernel in ("gaussian:1.5", "box:4", "highpass:0.3"):
        filter_cube(ds, kernel, method=method, **opts).compute()
        inputs.assert_unchanged()
