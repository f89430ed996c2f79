"""The per-pixel spectral autoencoder as data: a JSON-able spec, float arrays, and a
forward pass written once against the array namespace (NumPy or CuPy).

A network maps one standardized spectrum ``z`` (``band`` values) to ``K`` latent values
and back. It has two paths whose outputs add up:

- a linear path ``enc_skip`` (``band -> K``) and ``dec_skip`` (``K -> band``), initialised
  from PCA (see :mod:`cubepipe.pipeline.autoencoder_fit`), and
- a nonlinear path: the ``encoder`` trunk (``z -> h``), the ``mu`` head (``h -> K``), and
  the ``decoder`` (``s -> band``); a VAE adds the ``logvar`` head (``h -> K``).

So ``mu = enc_skip(z) + mu(encoder(z))`` and ``z_hat = dec_skip(s) + decoder(s)``. The
last layer of each nonlinear branch starts at zero, so before training the network *is*
PCA, and training moves away from it only where that helps.

The spec lists every branch as a sequence of layers (``linear``, ``conv1d``, ``act``,
``unflatten``, ``flatten``, ``resample``); the parameters are plain arrays named
``<layer>_weight`` / ``<layer>_bias``. Both are all that is stored (no pickle), and both
this module (inference, chunk by chunk) and :mod:`cubepipe.pipeline.compression.autoencoder.torch_backend`
(training) interpret them.

Layouts: here a batch of ``n`` pixels is ``(features, n)`` or ``(channels, length, n)``
(the strip layout of :mod:`cubepipe.pipeline.compression.pca`); PyTorch uses ``(n, features)`` /
``(n, channels, length)``. Flattening orders ``(channels, length)`` the same way in both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cubepipe.pipeline.backend import array_module, device_constant

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "FORMAT",
    "KINDS",
    "LOGVAR_RANGE",
    "augmented",
    "build_spec",
    "decode_rows",
    "decode_strip",
    "encode_rows",
    "encode_strip",
    "inference_params",
    "init_params",
    "param_dims",
    "parametric_layers",
    "resample_matrix",
    "strip_size",
]

KINDS = ("ae", "vae")
ARCHITECTURES = ("mlp", "conv")
ACTIVATIONS = ("silu", "tanh", "relu")
FORMAT = 1
#: log-variances of the VAE posterior are clipped to this range (both in training and here)
LOGVAR_RANGE = (-30.0, 20.0)
_BRANCHES = ("enc_skip", "encoder", "mu", "logvar", "dec_skip", "decoder")


def _linear(name: str, n_in: int, n_out: int, dims: tuple[str, str] | None = None) -> dict:
    layer: dict[str, Any] = {"op": "linear", "name": name, "in": n_in, "out": n_out}
    if dims is not None:
        layer["dims"] = list(dims)
    return layer


def _conv(name: str, c_in: int, c_out: int, kernel: int, stride: int = 1) -> dict:
    return {
        "op": "conv1d",
        "name": name,
        "in": c_in,
        "out": c_out,
        "kernel": kernel,
        "stride": stride,
        "padding": kernel // 2,
    }


def _conv_length(length: int, kernel: int, stride: int) -> int:
    return (length + 2 * (kernel // 2) - kernel) // stride + 1


def build_spec(
    *,
    kind: str,
    architecture: str,
    bands: int,
    components: int,
    hidden: tuple[int, ...] = (64, 32),
    activation: str = "silu",
    channels: int = 8,
    kernel: int = 5,
) -> dict[str, Any]:
    """The JSON-able description of a network (see the module docstring).

    ``mlp``: ``encoder`` = Linear/act over ``hidden``; ``decoder`` = Linear/act over
    ``reversed(hidden)`` then Linear to ``band``. ``conv``: ``encoder`` = two 1-D
    convolutions over the spectral axis (``channels`` filters of ``kernel`` taps, the
    second with stride 2), flattened, then Linear/act to ``hidden[-1]``; ``decoder`` =
    Linear/act to ``hidden[-1]`` and to ``channels x ceil(band / 2)``, linear
    resampling back to ``band`` samples, two 1-D convolutions (the last to 1 channel).
    """
    if kind not in KINDS or architecture not in ARCHITECTURES or activation not in ACTIVATIONS:
        raise ValueError(f"bad kind/architecture/activation: {kind}, {architecture}, {activation}")
    hidden = tuple(int(h) for h in hidden)
    act = {"op": "act"}
    if architecture == "mlp":
        sizes = (bands, *hidden)
        encoder = []
        for i in range(len(hidden)):
            dims = (f"{kind}_enc_{i}_out", "band") if i == 0 else None
            encoder += [_linear(f"enc_{i}", sizes[i], sizes[i + 1], dims), act]
        rsizes = (components, *reversed(hidden))
        decoder = []
        for i in range(len(hidden)):
            dims = (f"{kind}_dec_{i}_out", "component") if i == 0 else None
            decoder += [_linear(f"dec_{i}", rsizes[i], rsizes[i + 1], dims), act]
        decoder.append(_linear("dec_out", rsizes[-1], bands, ("band", f"{kind}_dec_out_in")))
    else:
        half = _conv_length(bands, kernel, 2)
        top = hidden[-1]
        encoder = [
            {"op": "unflatten", "channels": 1},
            _conv("enc_conv_0", 1, channels, kernel),
            act,
            _conv("enc_conv_1", channels, channels, kernel, stride=2),
            act,
            {"op": "flatten"},
            _linear("enc_0", channels * half, top),
            act,
        ]
        decoder = [
            _linear("dec_0", components, top, (f"{kind}_dec_0_out", "component")),
            act,
            _linear("dec_1", top, channels * half),
            act,
            {"op": "unflatten", "channels": channels},
            {"op": "resample", "size": bands},
            _conv("dec_conv_0", channels, channels, kernel),
            act,
            _conv("dec_conv_out", channels, 1, kernel),
            {"op": "flatten"},
        ]
        hidden = (top,)
    h = hidden[-1]
    branches: dict[str, list[dict]] = {
        "enc_skip": [_linear("enc_skip", bands, components, ("component", "band"))],
        "encoder": encoder,
        "mu": [_linear("mu", h, components, ("component", f"{kind}_mu_in"))],
        "dec_skip": [_linear("dec_skip", components, bands, ("band", "component"))],
        "decoder": decoder,
    }
    if kind == "vae":
        branches["logvar"] = [_linear("logvar", h, components, ("component", f"{kind}_mu_in"))]
    spec: dict[str, Any] = {
        "format": FORMAT,
        "kind": kind,
        "architecture": architecture,
        "bands": int(bands),
        "components": int(components),
        "hidden": list(hidden),
        "activation": activation,
        "branches": branches,
    }
    if architecture == "conv":
        spec.update(channels=int(channels), kernel=int(kernel))
    return spec


def parametric_layers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every layer with parameters, in branch order."""
    out = []
    for branch in _BRANCHES:
        out += [lay for lay in spec["branches"].get(branch, []) if "name" in lay]
    return out


def param_dims(spec: dict[str, Any], layer: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Stored dims of a layer's ``weight`` and ``bias``: named ones where they mean
    something (``band``, ``component``), else ``<kind>_<layer>_out`` / ``_in`` / ``_tap``."""
    base = f"{spec['kind']}_{layer['name']}"
    out_dim, in_dim = layer.get("dims", (f"{base}_out", f"{base}_in"))
    weight = (out_dim, in_dim) + ((f"{base}_tap",) if layer["op"] == "conv1d" else ())
    return {"weight": weight, "bias": (out_dim,)}


def _shapes(layer: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    w = (layer["out"], layer["in"]) + ((layer["kernel"],) if layer["op"] == "conv1d" else ())
    return {"weight": w, "bias": (layer["out"],)}


def init_params(spec: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Random float32 parameters, reproducible from ``seed`` alone: every weight and bias
    uniform in ``+-1/sqrt(fan_in)`` (PyTorch's default for Linear/Conv1d)."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for layer in parametric_layers(spec):
        shapes = _shapes(layer)
        fan_in = layer["in"] * layer.get("kernel", 1)
        bound = 1.0 / np.sqrt(fan_in)
        for part in ("weight", "bias"):
            params[f"{layer['name']}_{part}"] = rng.uniform(
                -bound, bound, size=shapes[part]
            ).astype(np.float32)
    return params


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float32 matrix of linear interpolation between sample centres
    (``align_corners=False``, edges clamped)."""
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m.astype(np.float32)


def strip_size(spec: dict[str, Any], budget: int = 8 * 2**20) -> int:
    """Pixels per strip so that the widest float32 intermediate is ~``budget`` bytes."""
    widest = spec["bands"]
    length = spec["bands"]
    for branch in _BRANCHES:
        for lay in spec["branches"].get(branch, []):
            if lay["op"] == "linear":
                widest = max(widest, lay["out"])
            elif lay["op"] == "conv1d":
                widest = max(widest, lay["out"] * length)
            elif lay["op"] == "resample":
                length = lay["size"]
    return int(min(max(budget // (4 * widest), 256), 1 << 16))


# -- forward pass in the array namespace of the input (NumPy or CuPy) ---------------------
#
# Inference runs on whole strips of pixels with one matrix product per layer and the
# activations computed in place (one temporary each), in float32. A linear layer's bias
# rides in its matrix product: its input carries a last row of ones ("augmented",
# ``(features + 1, n)``) and its matrix a last column holding the bias, so no pass over
# the data adds it. SiLU is evaluated as ``silu(x) = y * (1 + tanh(y))`` with ``y = x / 2``;
# the halving is folded into the layer before each activation (exact: a power of two),
# so it costs no pass either (see :func:`inference_params`).


def _halved_layers(spec: dict[str, Any]) -> set[str]:
    """Names of the layers whose output goes straight into a SiLU (their parameters are
    halved by :func:`inference_params`)."""
    if spec["activation"] != "silu":
        return set()
    out = set()
    for branch in spec["branches"].values():
        for prev, lay in zip(branch, branch[1:], strict=False):
            if lay["op"] == "act" and prev["op"] in ("linear", "conv1d"):
                out.add(prev["name"])
    return out


def inference_params(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, np.ndarray]:
    """The float32 parameters the forward pass of this module runs on: ``params`` (host
    arrays, any float dtype) with each layer that feeds a SiLU multiplied by 0.5, and for
    each linear layer ``<name>_wb``: ``[weight | bias]`` ``(out, in + 1)``."""
    halved = _halved_layers(spec)
    out = {}
    for layer in parametric_layers(spec):
        name = layer["name"]
        for part in ("weight", "bias"):
            v = np.asarray(params[f"{name}_{part}"], dtype=np.float32)
            out[f"{name}_{part}"] = np.ascontiguousarray(
                v * np.float32(0.5) if name in halved else v
            )
        if layer["op"] == "linear":
            out[f"{name}_wb"] = np.ascontiguousarray(
                np.concatenate([out[f"{name}_weight"], out[f"{name}_bias"][:, None]], axis=1)
            )
    return out


def augmented(xm: Any, x: Any) -> Any:
    """``x (features, n)`` with a last row of ones: ``(features + 1, n)``, ``x``'s dtype."""
    out = xm.empty((x.shape[0] + 1, x.shape[1]), dtype=x.dtype)
    out[:-1] = x
    out[-1] = 1
    return out


def _act_(xm: Any, x: Any, name: str, halved: bool) -> Any:
    """The activation, in place on ``x`` (an array this pass made, not an input); for SiLU
    ``x`` holds half the pre-activation when ``halved``."""
    if name == "relu":
        return xm.maximum(x, 0, out=x)
    if name == "tanh":
        return xm.tanh(x, out=x)
    if not halved:
        x *= 0.5
    t = xm.tanh(x)  # silu(2y) = 2y * sigmoid(2y) = y * (1 + tanh(y)): overflow-free
    t += 1
    x *= t
    return x


def _conv1d(xm: Any, x: Any, w: Any, b: Any, *, stride: int, padding: int) -> Any:
    """``x (C_in, L, n)``, ``w (C_out, C_in, taps)`` -> ``(C_out, L_out, n)``, as one
    matrix product over the stacked shifted inputs (im2col)."""
    c_in, length, n = x.shape
    c_out, _, taps = w.shape
    if padding:
        pad = xm.zeros((c_in, padding, n), dtype=x.dtype)
        x = xm.concatenate([pad, x, pad], axis=1)
    l_out = (length + 2 * padding - taps) // stride + 1
    cols = xm.stack(
        [x[:, t : t + stride * (l_out - 1) + 1 : stride, :] for t in range(taps)], axis=1
    )  # (C_in, taps, L_out, n): the row order of w's (C_in, taps) flattening
    out = xm.matmul(w.reshape(c_out, c_in * taps), cols.reshape(c_in * taps, l_out * n))
    out = out.reshape(c_out, l_out, n)
    out += b[:, None, None]
    return out


def _run(
    xm: Any, layers: list[dict], x: Any, p: dict[str, Any], spec: dict[str, Any], aug: bool
) -> tuple[Any, bool]:
    """The layers of one branch on ``x`` (features first, pixels last; ``aug``: with its
    row of ones); ``p`` from :func:`inference_params`. Returns the output and whether it
    is augmented. Never writes into ``x``."""
    halved = _halved_layers(spec)
    prev = None
    for lay in layers:
        op = lay["op"]
        if op == "linear":
            if not aug:
                x = augmented(xm, x)
            wb = p[f"{lay['name']}_wb"]
            out = xm.empty((wb.shape[0] + 1, x.shape[1]), dtype=x.dtype)
            out[-1] = 1
            xm.matmul(wb, x, out=out[:-1])
            x, aug = out, True
        elif op == "act":
            if prev is None or prev["op"] not in ("linear", "conv1d"):
                x = x.copy()  # only a layer's own output is changed in place
            body = x[:-1] if aug else x
            _act_(xm, body, spec["activation"], prev is not None and prev.get("name") in halved)
        else:
            if aug:
                x, aug = x[:-1], False
            if op == "conv1d":
                w, b = p[f"{lay['name']}_weight"], p[f"{lay['name']}_bias"]
                x = _conv1d(xm, x, w, b, stride=lay["stride"], padding=lay["padding"])
            elif op == "unflatten":
                x = x.reshape(lay["channels"], -1, x.shape[-1])
            elif op == "flatten":
                x = x.reshape(-1, x.shape[-1])
            elif op == "resample":
                m = device_constant(x, resample_matrix(x.shape[1], lay["size"]), x.dtype)
                x = xm.moveaxis(xm.tensordot(m, x, axes=([1], [1])), 0, 1)
            else:
                raise ValueError(f"unknown layer op {op!r}")
        prev = lay
    return x, aug


def _plain(x: Any, aug: bool) -> Any:
    return x[:-1] if aug else x


def encode_strip(
    xm: Any, z: Any, p: dict[str, Any], spec: dict[str, Any], *, aug: bool = False
) -> tuple[Any, Any]:
    """Latent means of standardized spectra ``z (band, n)`` (float32; with ``aug``, ``z``
    carries a last row of ones) and, for a VAE, the KL divergence of each pixel's
    posterior from N(0, I) (``(n,)``, else None). The means are ``(K + 1, n)``, their last
    row ones (ready for :func:`decode_strip` with ``aug``): take ``[:-1]``. ``xm`` is
    NumPy or CuPy itself (:func:`~cubepipe.pipeline.backend.array_module`), ``p`` from
    :func:`inference_params`."""
    br = spec["branches"]
    if not aug:
        z = augmented(xm, z)  # used twice: the trunk and the skip
    h, h_aug = _run(xm, br["encoder"], z, p, spec, True)
    mu, mu_aug = _run(xm, br["mu"], h, p, spec, h_aug)
    skip, skip_aug = _run(xm, br["enc_skip"], z, p, spec, True)
    if not mu_aug:
        mu = augmented(xm, mu)
    mu[:-1] += _plain(skip, skip_aug)
    if "logvar" not in br:
        return mu, None
    lv = xm.clip(_plain(*_run(xm, br["logvar"], h, p, spec, h_aug)), *LOGVAR_RANGE)
    m = mu[:-1]
    t = xm.exp(lv)
    t -= 1.0
    t -= lv
    t += m * m
    return mu, 0.5 * t.sum(axis=0)


def decode_strip(
    xm: Any, s: Any, p: dict[str, Any], spec: dict[str, Any], *, aug: bool = False
) -> Any:
    """Standardized reconstructions ``(band, n)`` float32 of latent values ``s (K, n)``
    (float32; with ``aug`` ``(K + 1, n)``, the last row ones; ``xm`` and ``p`` as for
    :func:`encode_strip`)."""
    br = spec["branches"]
    if not aug:
        s = augmented(xm, s)
    zhat = _plain(*_run(xm, br["decoder"], s, p, spec, True))
    zhat += _plain(*_run(xm, br["dec_skip"], s, p, spec, True))
    return zhat


def encode_rows(xp: Any, z: Any, p: dict[str, Any], spec: dict[str, Any]) -> tuple[Any, Any]:
    """Latent means ``(K, n)`` and KL (or None) of ``z (band, n)``: :func:`encode_strip`
    with the stored parameters ``p`` (as :func:`init_params` or the model store holds
    them; prepared here) in the namespace ``xp`` of ``z``."""
    xm = array_module(z)
    mu, kl = encode_strip(xm, z, _on(z, inference_params(spec, p)), spec)
    return mu[:-1], kl


def decode_rows(xp: Any, s: Any, p: dict[str, Any], spec: dict[str, Any]) -> Any:
    """:func:`decode_strip` with stored parameters (see :func:`encode_rows`)."""
    xm = array_module(s)
    return decode_strip(xm, s, _on(s, inference_params(spec, p)), spec)


def _on(like: Any, p: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: device_constant(like, v, np.float32) for k, v in p.items()}
