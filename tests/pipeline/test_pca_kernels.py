"""The host PCA chunk kernel (scores + reconstruction-error partials from one look at a
chunk) against a direct NumPy float64 computation: the model from ``numpy.linalg.eigh``,
every pixel's error formed explicitly from the float32 scores the kernel stored."""

from __future__ import annotations

import numpy as np
import pytest

from cubepipe.pipeline.compression.pca_kernels import ENCODE_STRIP, encode_block, project_block
from cubepipe.pipeline.stats.moments import strip_pixels


def _cube(nb: int, ny: int, nx: int, *, offset: float, seed: int) -> np.ndarray:
    """Correlated bands (a few sources + noise), float32, ``(band, y, x)``."""
    rng = np.random.default_rng(seed)
    sources = rng.standard_normal((4, ny * nx))
    mixing = rng.standard_normal((nb, 4))
    x = mixing @ sources + 0.05 * rng.standard_normal((nb, ny * nx)) + offset
    return x.reshape(nb, ny, nx).astype(np.float32)


def _model(x: np.ndarray, k: int, *, standardize: bool, whiten: bool) -> dict[str, np.ndarray]:
    """The model dict the kernels take, from NumPy alone (eigh of the float64 covariance
    of the pixels valid in every band)."""
    nb = x.shape[0]
    rows = x.reshape(nb, -1).astype(np.float64)
    rows = rows[:, ~np.isnan(rows).any(axis=0)]
    mean = rows.mean(axis=1)
    scale = rows.std(axis=1) if standardize else np.ones(nb)
    z = (rows - mean[:, None]) / scale[:, None]
    values, vectors = np.linalg.eigh(z @ z.T / (z.shape[1] - 1))
    order = np.argsort(values)[::-1][:k]
    factor = np.sqrt(values[order]) if whiten else np.ones(k)
    return {"w": vectors[:, order].T.copy(), "mean": mean, "scale": scale, "factor": factor}


def _direct(x: np.ndarray, scores: np.ndarray, m: dict[str, np.ndarray]) -> list[float]:
    """``[sse, n_values, sam_sum, n_angles, min, max]`` by forming every pixel's
    reconstruction ``x^ = mu + s * W^T (f t)`` from the stored float32 scores; spectral
    angles by Kahan's formula ``2 atan2(|a - b|, |a + b|)`` of the unit vectors."""
    nb = x.shape[0]
    xr = x.reshape(nb, -1).astype(np.float64)
    t = scores.reshape(scores.shape[0], -1).astype(np.float64)
    ok = ~np.isnan(xr).any(axis=0) & ~np.isnan(t).any(axis=0)
    xv, tv = xr[:, ok], t[:, ok]
    a = (m["w"] * m["factor"][:, None] * m["scale"][None, :]).T  # (B, K)
    xh = m["mean"][:, None] + a @ tv
    e = xv - xh
    # Kahan's angle between two vectors (accurate for small angles, unlike arccos)
    a1 = xv / np.linalg.norm(xv, axis=0)
    a2 = xh / np.linalg.norm(xh, axis=0)
    angles = 2 * np.arctan2(np.linalg.norm(a1 - a2, axis=0), np.linalg.norm(a1 + a2, axis=0))
    return [float(np.sum(e * e)), float(e.size), float(angles.sum()), float(ok.sum()),
            float(xv.min()), float(xv.max())]  # fmt: skip


def _scores_ref(x: np.ndarray, m: dict[str, np.ndarray]) -> np.ndarray:
    nb = x.shape[0]
    xr = x.reshape(nb, -1).astype(np.float64)
    w = m["w"] / m["factor"][:, None] / m["scale"][None, :]
    s = w @ (xr - m["mean"][:, None])
    return s.reshape((-1,) + x.shape[1:])


# 200 x 190 pixels: several strips of the host kernel (the last one shorter).
SHAPE = (15, 200, 190)
assert SHAPE[1] * SHAPE[2] > 3 * strip_pixels(SHAPE[0], ENCODE_STRIP)


@pytest.mark.parametrize(
    ("k", "standardize", "whiten", "offset"),
    [
        (5, False, False, 0.0),
        (3, True, False, 0.0),
        (4, False, True, 1000.0),
        (5, True, True, 50.0),
    ],
)
@pytest.mark.parametrize("invalid", ["none", "nan", "mask"])
def test_encode_block_matches_a_direct_float64_reconstruction(
    k: int, standardize: bool, whiten: bool, offset: float, invalid: str
) -> None:
    x = _cube(*SHAPE, offset=offset, seed=k)
    valid: tuple[np.ndarray, ...] = ()
    if invalid == "nan":
        x[:, 10:40, 20:60] = np.nan  # whole pixels
        x[3, 100:110, 5:9] = np.nan  # one band only
    m = _model(x, k, standardize=standardize, whiten=whiten)
    if invalid == "mask":
        v = np.ones(SHAPE, dtype=bool)
        v[:, 150:170, 100:190] = False
        valid = (v,)
    scores, partial = encode_block(x, *valid, m=m, axis=0, ndim=3)
    assert scores.dtype == np.float32 and scores.shape == (k, *SHAPE[1:])
    assert partial.dtype == np.float64 and partial.shape == (1, 1, 1, 6)
    ref = _scores_ref(x, m)
    bad = np.isnan(ref).any(axis=0)
    if valid:
        bad |= ~valid[0].all(axis=0)
    assert np.array_equal(np.isnan(scores).any(axis=0), bad)
    assert np.isnan(scores[:, bad]).all()
    np.testing.assert_allclose(scores[:, ~bad], ref[:, ~bad], rtol=1e-6, atol=1e-6)
    # project_block (no metrics) gives the same scores
    np.testing.assert_array_equal(project_block(x, *valid, m=m, axis=0), scores)
    got = partial.reshape(6)
    want = _direct(x if not valid else np.where(valid[0], x, np.nan), scores, m)
    np.testing.assert_allclose(got[[1, 3, 4, 5]], np.array(want)[[1, 3, 4, 5]], rtol=0)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-9)  # sse
    np.testing.assert_allclose(got[2], want[2], rtol=1e-9)  # sum of spectral angles


def test_encode_block_near_lossless_is_measured_directly() -> None:
    # K = B: the error is only the float32 rounding of the scores (~1e-15 of the centred
    # energy, on an offset of 1000), far below what the Gram identities resolve.
    x = _cube(6, 120, 110, offset=1000.0, seed=7)
    m = _model(x, 6, standardize=False, whiten=False)
    scores, partial = encode_block(x, m=m, axis=0, ndim=3)
    got, want = partial.reshape(6), _direct(x, scores, m)
    assert want[0] > 0
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-6)


def test_encode_block_all_invalid_chunk() -> None:
    x = np.full((5, 30, 20), np.nan, dtype=np.float32)
    m = {"w": np.eye(5)[:2], "mean": np.zeros(5), "scale": np.ones(5), "factor": np.ones(2)}
    scores, partial = encode_block(x, m=m, axis=0, ndim=3)
    assert np.isnan(scores).all()
    p = partial.reshape(6)
    assert list(p[:4]) == [0.0, 0.0, 0.0, 0.0]
