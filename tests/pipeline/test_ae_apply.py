"""Applying a stored autoencoder (the float32, strip-by-strip kernels of
``autoencoder/apply.py``) against an independent float64 NumPy forward pass of the same
weights: scores, error metrics, KL and reconstructions, for every architecture, with
invalid pixels, strips that do not divide the chunks, and float64 / integer cubes."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from cubepipe.pipeline.compression.autoencoder import apply
from cubepipe.pipeline.compression.autoencoder.fit import (
    _model_dataset,
    ae_project,
    ae_reconstruct,
    summarize_ae_metrics,
)
from cubepipe.pipeline.compression.autoencoder.net import build_spec, init_params

#: What float32 inference may change against the float64 reference: scores (absolute;
#: standardized units, |score| up to ~3 here), reconstructions (relative to the data's
#: range) and the metrics (relative). Measured here: scores 1.4e-6, reconstructions
#: 2e-7 of the range, RMSE / SAM 4e-8, KL 3e-7 (the strip kernels before issue 19 item 7,
#: float64 centring and metrics: 7e-7, 1.5e-7, 3e-9, 3e-8).
SCORE_ATOL = 1e-5
REC_RTOL = 2e-6
METRIC_RTOL = 1e-6


# -- the reference: float64, one pixel per row, written from the spec alone --------------


def _act(x: np.ndarray, name: str) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "tanh":
        return np.tanh(x)
    return x / (1.0 + np.exp(-x))  # silu


def _resample(x: np.ndarray, size: int) -> np.ndarray:
    """Linear interpolation between sample centres, edges clamped (``x (n, C, L)``)."""
    n_in = x.shape[-1]
    pos = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
    idx = np.arange(n_in)
    flat = x.reshape(-1, n_in)
    return np.stack([np.interp(pos, idx, row) for row in flat]).reshape(*x.shape[:-1], size)


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Cross-correlation of ``x (n, C_in, L)`` with ``w (C_out, C_in, taps)``."""
    n, c_in, length = x.shape
    taps = w.shape[2]
    xp = np.concatenate([np.zeros((n, c_in, pad)), x, np.zeros((n, c_in, pad))], axis=2)
    l_out = (length + 2 * pad - taps) // stride + 1
    out = np.empty((n, w.shape[0], l_out))
    for i in range(l_out):
        window = xp[:, :, i * stride : i * stride + taps]  # (n, C_in, taps)
        out[:, :, i] = np.einsum("nct,oct->no", window, w) + b
    return out


def _branch(layers: list[dict], x: np.ndarray, p: dict[str, np.ndarray], act: str):
    for lay in layers:
        op = lay["op"]
        if op == "linear":
            x = x @ p[lay["name"] + "_weight"].T + p[lay["name"] + "_bias"]
        elif op == "conv1d":
            w, b = p[lay["name"] + "_weight"], p[lay["name"] + "_bias"]
            x = _conv(x, w, b, lay["stride"], lay["padding"])
        elif op == "act":
            x = _act(x, act)
        elif op == "unflatten":
            x = x.reshape(x.shape[0], lay["channels"], -1)
        elif op == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif op == "resample":
            x = _resample(x, lay["size"])
    return x


def reference(model: xr.Dataset, kind: str, x: np.ndarray):
    """float64 ``(scores, kl, decode)`` of pixels ``x (n, band)`` (all valid)."""
    spec = model[f"{kind}_mean"].attrs["cubepipe_model"]
    p = {
        v.removeprefix(f"{kind}_"): model[v].values.astype(np.float64)
        for v in model.data_vars
        if v.endswith(("_weight", "_bias"))
    }
    br, act = spec["branches"], spec["activation"]
    mean, scale = model[f"{kind}_mean"].values, model[f"{kind}_scale"].values
    z = (x - mean) / scale
    h = _branch(br["encoder"], z, p, act)
    mu = _branch(br["enc_skip"], z, p, act) + _branch(br["mu"], h, p, act)
    kl = None
    if "logvar" in br:
        lv = np.clip(_branch(br["logvar"], h, p, act), -30.0, 20.0)
        kl = 0.5 * np.sum(mu**2 + np.exp(lv) - 1 - lv, axis=1)

    def decode(s: np.ndarray) -> np.ndarray:
        zhat = _branch(br["dec_skip"], s, p, act) + _branch(br["decoder"], s, p, act)
        return zhat * scale + mean

    return mu, kl, decode


def reference_metrics(x: np.ndarray, xhat: np.ndarray) -> dict[str, float]:
    """RMSE, PSNR, mean spectral angle (degrees) of valid pixels ``x``, ``xhat (n, band)``."""
    rmse = float(np.sqrt(np.mean((x - xhat) ** 2)))
    cos = np.sum(x * xhat, 1) / np.sqrt(np.sum(x * x, 1) * np.sum(xhat * xhat, 1))
    sam = float(np.degrees(np.mean(np.arccos(np.clip(cos, -1, 1)))))
    psnr = float(20 * np.log10((x.max() - x.min()) / rmse))
    return {"rmse": rmse, "psnr_db": psnr, "sam_deg": sam}


# -- cases ----------------------------------------------------------------------------------


def _cube(nb: int = 14, ny: int = 40, nx: int = 46, *, seed: int = 0) -> np.ndarray:
    """Smooth positive spectra far from zero (mean/scale ~ 10): a float32 cube where
    centring in float32 would lose digits if done carelessly."""
    rng = np.random.default_rng(seed)
    wl = np.linspace(0, 1, nb)
    e = np.stack([1 + 0.3 * np.sin(6 * wl + k) for k in range(3)])
    a = rng.dirichlet(np.full(3, 0.6), size=ny * nx)
    x = a @ e + 0.2 * (a[:, :1] * a[:, 1:2]) * e[2] + 0.004 * rng.normal(size=(ny * nx, nb))
    return x.T.reshape(nb, ny, nx).astype(np.float32)


def _model(kind: str, architecture: str, cube: np.ndarray) -> xr.Dataset:
    nb = cube.shape[0]
    spec = build_spec(kind=kind, architecture=architecture, bands=nb, components=4, hidden=(24, 12))
    params = {k: 2.0 * v for k, v in init_params(spec, seed=3).items()}  # beyond linear
    flat = cube.reshape(nb, -1).astype(np.float64)
    return _model_dataset(spec, params, flat.mean(1), flat.std(1), None)


def _dataset(cube: np.ndarray, *, invalid: bool, chunks: int = 16) -> xr.Dataset:
    cube = cube.copy()
    mask = np.ones(cube.shape[1:], bool)
    if invalid:
        cube[5, 3, 4] = np.nan
        cube[:, 30:33, 40:] = np.nan
        mask[10:13, :7] = False
    return xr.Dataset(
        {
            "cube": (
                ("band", "y", "x"),
                da.from_array(cube, chunks=(cube.shape[0], chunks, chunks)),
            ),
            "mask": (("y", "x"), mask),
        }
    )


@pytest.mark.parametrize(
    ("kind", "architecture", "activation_strip"),
    [("ae", "mlp", 100), ("vae", "mlp", 8192), ("ae", "conv", 77), ("vae", "conv", 100)],
    ids=["ae-mlp-strips", "vae-mlp-chunk", "ae-conv-strips", "vae-conv-strips"],
)
def test_apply_matches_a_float64_reference(
    monkeypatch: pytest.MonkeyPatch, kind: str, architecture: str, activation_strip: int
) -> None:
    monkeypatch.setattr(apply, "CPU_STRIP", activation_strip)  # strips not dividing chunks
    cube = _cube()
    ds = _dataset(cube, invalid=True)
    model = _model(kind, architecture, cube)
    scores, partials = ae_project(ds, model)
    s = scores.values
    assert s.dtype == np.float32 and s.shape == (4, 40, 46)

    x = ds["cube"].values.reshape(cube.shape[0], -1).T.astype(np.float64)
    ok = ~np.isnan(x).any(1) & ds["mask"].values.ravel()
    mu, kl, decode = reference(model, kind, x[ok])
    got = s.reshape(4, -1).T
    assert np.isnan(got[~ok]).all() and np.isfinite(got[ok]).all()
    assert np.abs(got[ok] - mu).max() < SCORE_ATOL  # scores ~N(0, 1)-sized here
    assert np.abs(mu).max() > 1.0  # (the scores are not trivially small)

    # the metrics: of the reconstruction from the float32 scores as stored
    xhat = decode(got[ok].astype(np.float64))
    want = reference_metrics(x[ok], xhat)
    m = summarize_ae_metrics(partials.compute(), kind=kind)
    assert m["n_values"] == ok.sum() * cube.shape[0]
    for key in ("rmse", "sam_deg"):
        assert m[key] == pytest.approx(want[key], rel=METRIC_RTOL), key
    assert m["psnr_db"] == pytest.approx(want["psnr_db"], abs=1e-3)
    if kind == "vae":
        assert kl is not None
        assert m["kl_nats"] == pytest.approx(kl.mean(), rel=1e-5)  # float32 per pixel

    rec = ae_reconstruct(scores, model).values
    assert rec.dtype == np.float32
    r = rec.reshape(cube.shape[0], -1).T
    assert np.isnan(r[~ok]).all()
    span = x[ok].max() - x[ok].min()
    assert np.abs(r[ok] - xhat).max() < REC_RTOL * span


@pytest.mark.parametrize("dtype", [np.float64, np.uint16])
def test_apply_takes_float64_and_integer_cubes(dtype: type) -> None:
    cube = _cube(nb=9, ny=20, nx=22, seed=1)
    if dtype is np.uint16:
        cube = np.round(cube * 4000)  # DN: squares overflow uint16 if not promoted
    cube = cube.astype(dtype)
    ds = _dataset(cube, invalid=False)
    model = _model("ae", "mlp", cube.astype(np.float64))
    scores, partials = ae_project(ds, model)
    x = cube.reshape(cube.shape[0], -1).T.astype(np.float64)
    mu, _, decode = reference(model, "ae", x)
    got = scores.values.reshape(4, -1).T
    assert np.abs(got - mu).max() < SCORE_ATOL
    want = reference_metrics(x, decode(got.astype(np.float64)))
    m = summarize_ae_metrics(partials.compute())
    assert m["rmse"] == pytest.approx(want["rmse"], rel=METRIC_RTOL)
    assert m["sam_deg"] == pytest.approx(want["sam_deg"], rel=METRIC_RTOL)
