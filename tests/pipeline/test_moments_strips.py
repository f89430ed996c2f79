"""The one-pass strip kernel of ``block_moments`` (chunks wider than one strip) against
two-pass float64 NumPy, and its fallback to the general path on hostile chunks: NaN in
one strip only, +-inf, a mask, a last strip cut short, an integer cube, a large offset."""

from __future__ import annotations

import numpy as np
import pytest

from cubepipe.pipeline.stats.moments import M2, MAX, MEAN, MIN, N, block_moments, strip_pixels

EPS = np.finfo(np.float64).eps


def _reference(x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``(band, 5)`` of each band's valid values by two-pass float64 NumPy."""
    x64 = x.astype(np.float64)
    ok = ~np.isnan(x64)
    if valid is not None:
        ok &= valid[None]
    rows = []
    for band, keep in zip(x64, ok, strict=True):
        v = band[keep]
        rows.append([v.size, v.mean(), ((v - v.mean()) ** 2).sum(), v.min(), v.max()])
    return np.array(rows, dtype=np.float64)


def _check(got: np.ndarray, want: np.ndarray, absmax: float) -> None:
    np.testing.assert_array_equal(got[:, N], want[:, N])
    np.testing.assert_allclose(got[:, MEAN], want[:, MEAN], rtol=0, atol=8 * EPS * absmax)
    var, ref = got[:, M2] / got[:, N], want[:, M2] / want[:, N]
    assert np.all(np.abs(var - ref) <= 1e-12 * ref + 32 * EPS * absmax * np.sqrt(ref))
    np.testing.assert_array_equal(got[:, MIN], want[:, MIN])
    np.testing.assert_array_equal(got[:, MAX], want[:, MAX])


def _cube(shape: tuple[int, int, int], offset: float, dtype: str = "float32") -> np.ndarray:
    rng = np.random.default_rng(7)
    scale = rng.uniform(0.01, 300.0, size=(shape[0], 1, 1))
    return (offset + rng.normal(size=shape) * scale).astype(dtype)


@pytest.mark.parametrize("offset", [0.0, 1e4, -3e6])
@pytest.mark.parametrize("width", [1, 2, 7])  # strips a chunk holds, the last cut short
def test_chunks_of_several_strips_match_two_pass_float64(offset: float, width: int) -> None:
    nb = 15
    px = width * strip_pixels(nb) - 37 if width > 1 else strip_pixels(nb) // 3
    x = _cube((nb, 1, px), offset)
    _check(block_moments(x, band_axis=0), _reference(x), float(np.abs(x).max()))


def test_band_axis_not_first_and_float64_input() -> None:
    x = _cube((3, 9000, 4), 250.0, "float64")  # band last: (y, x, band) after the move
    y = np.moveaxis(x, 0, -1)
    _check(block_moments(y, band_axis=2), _reference(x), float(np.abs(x).max()))


def test_integer_cube() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 65535, size=(4, 90, 110), dtype=np.uint16)
    _check(block_moments(x, band_axis=0), _reference(x), 65535.0)


def test_nan_in_one_strip_only_falls_back_to_the_valid_values() -> None:
    x = _cube((5, 1, 3 * strip_pixels(5)), 100.0)
    x[2, 0, -5] = np.nan  # in the last strip of one band
    x[:, 0, 10:20] = np.nan  # whole pixels in the first strip
    _check(block_moments(x, band_axis=0), _reference(x), float(np.nanmax(np.abs(x))))


def test_mask_all_true_and_partly_false() -> None:
    x = _cube((4, 60, 300), -50.0)
    every = np.ones((60, 300), dtype=bool)
    _check(block_moments(x, every[None], band_axis=0), _reference(x), float(np.abs(x).max()))
    some = every.copy()
    some[5:9, 200:] = False
    got = block_moments(x, np.broadcast_to(some, x.shape), band_axis=0)
    _check(got, _reference(x, some), float(np.abs(x).max()))


def test_infinite_values_give_what_the_general_path_gives() -> None:
    x = _cube((3, 40, 400), 1.0)
    x[1, 3, 7] = np.inf
    x[2, 0, 0] = -np.inf
    got = block_moments(x, band_axis=0)
    assert got[1, MAX] == np.inf and got[2, MIN] == -np.inf
    assert not np.isfinite(got[1, MEAN]) and not np.isfinite(got[2, MEAN])
    _check(got[:1], _reference(x[:1]), float(np.abs(x[0]).max()))  # the clean band exact


def test_all_nan_chunk_and_empty_chunk() -> None:
    x = np.full((2, 30, 300), np.nan, dtype=np.float32)
    got = block_moments(x, band_axis=0)
    np.testing.assert_array_equal(got[:, N], 0)
    assert np.all(got[:, MIN] == np.inf) and np.all(got[:, MAX] == -np.inf)
    empty = block_moments(np.empty((2, 0, 5), dtype=np.float32), band_axis=0)
    np.testing.assert_array_equal(empty[:, N], 0)


def test_input_is_not_written() -> None:
    x = _cube((4, 50, 400), 3.0)
    before = x.copy()
    x.flags.writeable = False  # as kept chunks are
    block_moments(x, band_axis=0)
    np.testing.assert_array_equal(x, before)
