"""The synthetic demo cube is realistic: signed, correlated, with invalid pixels."""

from __future__ import annotations

import numpy as np
import pytest

from cubepipe.pipeline.synthetic import make_cube


def test_shape_dtype_and_coordinates() -> None:
    ds = make_cube((7, 50, 60), seed=3)
    cube = ds["cube"]
    assert cube.dims == ("band", "y", "x")
    assert cube.shape == (7, 50, 60)
    assert cube.dtype == np.float32
    assert ds["wavelength"].attrs["units"] == "nm"
    assert np.all(np.diff(ds["wavelength"].values) > 0)


def test_deterministic_and_realistic() -> None:
    a = make_cube("small", seed=5)["cube"].values
    b = make_cube("small", seed=5)["cube"].values
    assert a.tobytes() == b.tobytes()
    assert make_cube("small", seed=6)["cube"].values.tobytes() != a.tobytes()
    valid = a[:, ~np.isnan(a).any(axis=0)]
    assert (valid < 0).mean() > 0.05  # plenty of negative values
    assert np.isnan(a).all(axis=0).sum() > 100  # a disc of invalid pixels in every band
    # Correlated bands: four latent sources explain nearly all variance.
    ev = np.linalg.eigvalsh(np.cov(valid.astype(np.float64)))[::-1]
    assert ev[:4].sum() / ev.sum() > 0.97


def test_no_nan_when_asked() -> None:
    assert not np.isnan(make_cube((3, 40, 40), nan_disc=False)["cube"].values).any()


def test_bad_size_is_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"size must be one of .* \(band, y, x\); got \(0, 10, 10\)"
    ):
        make_cube((0, 10, 10))
