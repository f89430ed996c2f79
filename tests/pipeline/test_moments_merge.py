"""The one-pass moment merge (pipeline/stats/moments.py) against two-pass float64 NumPy.

Partial ``{n, mean, m2, min, max}`` (and co-moment) summaries merged in any order and any
grouping -- through dask with random chunkings and a binary tree (``split_every=2``), and
by calling the merge/combine functions directly on random partitions in random order --
must give what ``np.mean``, ``np.var`` and ``np.cov`` give on the valid values, including
data with a large offset (1e6 + noise) and NaN/mask-invalid values.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cubepipe.pipeline.stats.moments import (
    M2,
    MAX,
    MEAN,
    MIN,
    NFIELDS,
    N,
    _combine,
    band_moments,
    block_comoments,
    block_moments,
    merge_comoments,
    merge_moments,
)

EPS = np.finfo(np.float64).eps
#: Tolerances: a few roundings of the largest value for the mean; for the variance, the
#: rounding of the partial means (``EPS * max|x|``) times the spread, the error of a
#: centred merge. The uncentred formula errs by ``EPS * max|x| ** 2``: ``max|x| / std``
#: times more (1e6 on the offset data), far outside these.
MEAN_ULPS = 8
VAR_ULPS = 32
VAR_RTOL = 1e-12


def _data(seed: int, shape: tuple[int, int, int], offset: float, dtype: str, invalid: str):
    """``(x, valid)``: noise around ``offset`` per band, with invalid values by kind."""
    rng = np.random.default_rng(seed)
    nb = shape[0]
    x = offset + rng.normal(0.0, 1.0, size=shape) * rng.uniform(0.5, 3.0, size=(nb, 1, 1))
    x = x.astype(dtype)
    valid = None
    if invalid in ("values", "both"):  # NaN in single values: bands differ
        x[rng.random(shape) < 0.15] = np.nan
    if invalid in ("pixels", "both"):  # NaN through every band of some pixels
        x[:, rng.random(shape[1:]) < 0.2] = np.nan
    if invalid in ("mask", "both"):
        valid = rng.random(shape[1:]) > 0.25
    return x, valid


def _reference(x: np.ndarray, valid: np.ndarray | None) -> dict[str, np.ndarray]:
    """Two-pass float64 NumPy statistics of each band's valid values, and the covariance
    of the pixels valid in every band."""
    x64 = x.astype(np.float64)
    ok = ~np.isnan(x64)
    if valid is not None:
        ok &= valid[None]
    ref: dict[str, np.ndarray] = {"n": ok.sum(axis=(1, 2)).astype(np.float64)}
    ref["absmax"] = np.nanmax(np.abs(x64), initial=0.0)
    means, vars_, los, his = [], [], [], []
    for band, keep in zip(x64, ok, strict=True):
        v = band[keep]
        means.append(np.mean(v) if v.size else 0.0)
        vars_.append(np.var(v) if v.size else 0.0)
        los.append(np.min(v) if v.size else np.inf)
        his.append(np.max(v) if v.size else -np.inf)
    ref.update(mean=np.array(means), var=np.array(vars_), min=np.array(los), max=np.array(his))
    every = ok.all(axis=0)
    pix = x64[:, every]  # (band, pixels valid in every band)
    ref["n_all"] = float(pix.shape[1])
    if pix.shape[1]:
        ref["mean_all"] = np.mean(pix, axis=1)
        ref["cov"] = np.cov(pix, bias=True).reshape(x.shape[0], x.shape[0])
    return ref


def _check_moments(packed: np.ndarray, ref: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(packed[:, N], ref["n"])
    has = ref["n"] > 0
    mean_tol = MEAN_ULPS * EPS * ref["absmax"]
    np.testing.assert_allclose(packed[has, MEAN], ref["mean"][has], rtol=0, atol=mean_tol)
    var, want = packed[has, M2] / packed[has, N], ref["var"][has]
    tol = VAR_RTOL * want + VAR_ULPS * EPS * ref["absmax"] * np.sqrt(want)
    assert np.all(np.abs(var - want) <= tol), (var, want, tol)
    np.testing.assert_array_equal(packed[has, MIN], ref["min"][has])
    np.testing.assert_array_equal(packed[has, MAX], ref["max"][has])


def _check_comoments(packed: np.ndarray, ref: dict[str, np.ndarray]) -> None:
    _check_moments(packed[:, :NFIELDS], ref)
    np.testing.assert_array_equal(packed[:, NFIELDS], ref["n_all"])
    if not ref["n_all"]:
        return
    mean_tol = MEAN_ULPS * EPS * ref["absmax"]
    np.testing.assert_allclose(packed[:, NFIELDS + 1], ref["mean_all"], rtol=0, atol=mean_tol)
    cov, want = packed[:, NFIELDS + 2 :] / ref["n_all"], ref["cov"]
    spread = np.sqrt(np.outer(np.diag(want), np.diag(want)))  # off-diagonal terms ~ 0
    tol = VAR_RTOL * spread + VAR_ULPS * EPS * ref["absmax"] * np.sqrt(spread)
    assert np.all(np.abs(cov - want) <= tol), (cov, want, tol)


def _cuts(draw, n: int) -> tuple[int, ...]:
    """A random chunking of a length-``n`` axis."""
    points = draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=min(n - 1, 6)))
    edges = [0, *sorted(p for p in points if p < n), n]
    return tuple(b - a for a, b in zip(edges, edges[1:], strict=False))


@st.composite
def cases(draw):
    shape = (draw(st.integers(1, 4)), draw(st.integers(1, 24)), draw(st.integers(1, 30)))
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "shape": shape,
        "offset": draw(st.sampled_from([0.0, 1e6, -1e6])),
        "dtype": draw(st.sampled_from(["float64", "float32"])),
        "invalid": draw(st.sampled_from(["none", "values", "pixels", "mask", "both"])),
        "chunks": tuple(_cuts(draw, n) for n in shape),
    }


@settings(max_examples=20)
@given(case=cases(), kind=st.sampled_from(["moments", "comoments"]))
def test_dask_tree_merge_of_random_chunkings_equals_numpy(case, kind) -> None:
    x, valid = _data(case["seed"], case["shape"], case["offset"], case["dtype"], case["invalid"])
    data = da.from_array(x, chunks=case["chunks"])
    v = None if valid is None else da.from_array(np.broadcast_to(valid, x.shape), data.chunks)
    with dask.config.set(split_every=2, scheduler="synchronous"):
        packed = band_moments(data, band_axis=0, valid=v, kind=kind).compute()
    ref = _reference(x, valid)
    (_check_comoments if kind == "comoments" else _check_moments)(packed, ref)


def _random_partitions(rng: np.random.Generator, x: np.ndarray, valid, parts: int):
    """Pixels shuffled and cut into ``parts`` groups (some may be empty) as ``(band, m)``
    blocks, with their validity."""
    nb = x.shape[0]
    flat = x.reshape(nb, -1)
    ok = None if valid is None else np.broadcast_to(valid, x.shape).reshape(nb, -1)
    order = rng.permutation(flat.shape[1])
    cuts = np.sort(rng.integers(0, flat.shape[1] + 1, size=parts - 1))
    for idx in np.split(order, cuts):
        yield flat[:, idx], (None if ok is None else ok[:, idx])


@settings(max_examples=20)
@given(
    case=cases(),
    kind=st.sampled_from(["moments", "comoments"]),
    parts=st.integers(1, 12),
    order_seed=st.integers(0, 2**32 - 1),
)
def test_merging_random_partitions_in_random_order_and_grouping(
    case,
    kind: str,
    parts: int,
    order_seed: int,
) -> None:
    x, valid = _data(case["seed"], case["shape"], case["offset"], case["dtype"], case["invalid"])
    rng = np.random.default_rng(order_seed)
    block, merge = (
        (block_comoments, merge_comoments)
        if kind == "comoments"
        else (block_moments, merge_moments)
    )
    partials = [block(b, v, band_axis=0) for b, v in _random_partitions(rng, x, valid, parts)]
    ref = _reference(x, valid)
    check = _check_comoments if kind == "comoments" else _check_moments

    # Any grouping: merge two random partials until one is left.
    pool = list(partials)
    while len(pool) > 1:
        i, j = sorted(rng.choice(len(pool), size=2, replace=False))
        b, a = pool.pop(j), pool.pop(i)
        pool.append(merge(a, b) if rng.random() < 0.5 else merge(b, a))
    check(pool[0], ref)

    # The reduction's combine on the partials stacked in a random order.
    stacked = np.stack([partials[i] for i in rng.permutation(len(partials))])
    check(_combine(stacked, (0,), keepdims=False, kind=kind), ref)


def test_large_offset_where_a_raw_sum_of_squares_fails() -> None:
    # The reference is meaningful: the uncentred formula loses every digit here.
    rng = np.random.default_rng(7)
    x = 1e6 + rng.normal(0, 1e-3, size=(2, 50, 60))
    naive = np.mean(x**2, axis=(1, 2)) - np.mean(x, axis=(1, 2)) ** 2
    ref = _reference(x, None)
    assert np.max(np.abs(naive - ref["var"]) / ref["var"]) > 1.0
    partials = [block_moments(b, band_axis=0) for b, _ in _random_partitions(rng, x, None, 9)]
    acc = partials[0]
    for p in partials[1:]:
        acc = merge_moments(acc, p)
    _check_moments(acc, ref)


def test_block_comoments_over_many_strips_with_an_offset_and_non_finite_values() -> None:
    """The one-pass shifted path (every value finite: several strips, one BLAS product
    each) and its fall-back to the masked path (a NaN, an infinity, a mask) against
    two-pass float64 NumPy, on 15 bands with a 1e6 offset (where an unshifted sum of
    squares would cancel) and a band whose sample mean is far from its mean."""
    rng = np.random.default_rng(19)
    x = 1e6 + rng.normal(0.0, 2.0, size=(15, 230, 190))  # 43700 pixels: two strips
    x[3, :5] += 1e3  # the shift's sample (every 42nd pixel) misses most of this
    x = x.astype(np.float32)
    _check_comoments(block_comoments(x, band_axis=0), _reference(x, None))
    mask = np.ones(x.shape[1:], dtype=bool)
    full = np.broadcast_to(mask, x.shape)
    _check_comoments(block_comoments(x, full, band_axis=0), _reference(x, mask))
    mask[7, 9] = False
    _check_comoments(block_comoments(x, full, band_axis=0), _reference(x, mask))
    y = x.copy()
    y[2, 100, 100] = np.nan
    _check_comoments(block_comoments(y, band_axis=0), _reference(y, None))
    w = x.copy()
    w[:, :20, :] = np.nan  # whole pixels, first strip only: the next strip is clean
    w[:, 200:, 50:60] = np.nan  # and some in the last strip
    _check_comoments(block_comoments(w, band_axis=0), _reference(w, None))
    w[5, 190, 7] = np.nan  # one band only: per-band moments differ from the all-valid set
    _check_comoments(block_comoments(w, band_axis=0), _reference(w, None))
    many = np.random.default_rng(3).random(x.shape[1:]) > 0.3
    full = np.broadcast_to(many, x.shape)
    _check_comoments(block_comoments(w, full, band_axis=0), _reference(w, many))
    unsampled = x.copy().reshape(15, -1)
    unsampled[:, :: unsampled.shape[1] // 1024] = np.nan  # every pixel the shift samples
    unsampled = unsampled.reshape(x.shape)  # (a shift of 0 would cancel the 1e6 offset)
    _check_comoments(block_comoments(unsampled, band_axis=0), _reference(unsampled, None))
    nothing = np.full(x.shape, np.nan, dtype=np.float32)
    _check_comoments(block_comoments(nothing, band_axis=0), _reference(nothing, None))
    z = x.copy()
    z[4, 3, 3] = np.inf  # not NaN, so kept: the masked path's sums say inf, not a number
    with np.errstate(invalid="ignore"):
        packed = block_comoments(z, band_axis=0)
    assert packed[4, MAX] == np.inf and not np.isfinite(packed[4, M2])
