"""Training a spectral autoencoder with PyTorch (the ``ae`` extra), imported lazily.

The network is the one :mod:`cubepipe.pipeline.compression.autoencoder.net` describes; this module
interprets the same spec with ``torch.nn.functional`` (layout ``(n, features)``), trains
its parameters on standardized sample spectra and hands them back as NumPy float32 arrays.
Nothing of PyTorch is stored: inference runs from the arrays alone.

Losses, per pixel of ``band`` values ``z`` and per-band weights ``w`` (mean 1):

- AE: ``mse = mean_b w_b (z_hat_b - z_b)^2``.
- VAE: ``band/2 * log(mse) + beta * KL(q(s|z) || N(0, I))`` with ``z_hat`` decoded from one
  reparameterised sample ``s = mu + exp(logvar / 2) * eps``. The first term is the
  Gaussian negative log-likelihood with its variance set to its optimum, the batch MSE
  (a "calibrated decoder", Rybkin et al. 2021), so ``beta = 1`` is the plain ELBO with no
  noise level to tune.

Held-out pixels are scored after every epoch with the latent means (deterministic); the
parameters with the best held-out loss are kept, the epoch before any training included,
so with PCA initialisation the held-out AE error is never above PCA's. When training
stops, how the learning rate falls, and the stated reason are
:mod:`cubepipe.pipeline.compression.autoencoder.schedule`'s. On small samples the batch
shrinks so that an epoch still makes 64 steps.

References
----------
O. Rybkin, K. Daniilidis, S. Levine, "Simple and Effective VAE Training with Calibrated
Decoders", ICML 2021.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from cubepipe.pipeline.compression.autoencoder.net import LOGVAR_RANGE, resample_matrix
from cubepipe.pipeline.compression.autoencoder.schedule import Schedule
from cubepipe.storage.errors import CubepipeError, CubepipeWarning, MissingDependencyError

__all__ = ["import_torch", "torch_device", "train_network"]

_EVAL_BATCH = 1 << 15
#: Smaller batches on small samples, so that an epoch makes at least this many steps.
_MIN_STEPS = 64


def import_torch() -> ModuleType:
    """PyTorch, or a one-line error naming the ``ae`` extra."""
    try:
        import torch  # noqa: PLC0415  (optional dependency, imported on use)
    except ImportError as exc:
        raise MissingDependencyError(
            "--method ae|vae (training an autoencoder)", "torch", "ae"
        ) from exc
    except Exception as exc:  # a broken install raises all sorts of things
        raise CubepipeError(
            f"PyTorch failed to import ({type(exc).__name__}: {exc}); reinstall it with: "
            "pip install --force-reinstall 'cubepipe[ae]'"
        ) from exc
    return torch


def torch_device(torch: ModuleType, device: str, say: Callable[[str], None]) -> Any:
    """The torch device that trains: CUDA when the run's device is the GPU and this
    PyTorch build sees one; else the CPU, with a warning if the GPU was asked for."""
    if device == "gpu":
        if torch.cuda.is_available():
            return torch.device("cuda")
        msg = (
            f"this PyTorch ({torch.__version__}) has no CUDA: the autoencoder trains on the "
            "CPU (encoding still runs on the GPU); install a CUDA build of torch to train there"
        )
        warnings.warn(msg, CubepipeWarning, stacklevel=2)
        say(f"cubepipe compress: {msg}")
    return torch.device("cpu")


class _Runner:
    """The spec's layers over ``torch.nn.functional`` (see autoencoder_net._run)."""

    def __init__(self, torch: ModuleType, spec: dict[str, Any], params: dict[str, Any]):
        self.torch = torch
        self.F = torch.nn.functional
        self.spec = spec
        self.p = params
        self.act = {"silu": self.F.silu, "tanh": torch.tanh, "relu": self.F.relu}[
            spec["activation"]
        ]
        self._resample: dict[tuple[int, int], Any] = {}

    def run(self, branch: str, x: Any) -> Any:
        for lay in self.spec["branches"][branch]:
            op = lay["op"]
            if op == "linear":
                x = self.F.linear(x, self.p[f"{lay['name']}_weight"], self.p[f"{lay['name']}_bias"])
            elif op == "conv1d":
                w, b = self.p[f"{lay['name']}_weight"], self.p[f"{lay['name']}_bias"]
                x = self.F.conv1d(x, w, b, stride=lay["stride"], padding=lay["padding"])
            elif op == "act":
                x = self.act(x)
            elif op == "unflatten":
                x = x.reshape(x.shape[0], lay["channels"], -1)
            elif op == "flatten":
                x = x.reshape(x.shape[0], -1)
            elif op == "resample":
                x = x @ self._matrix(x.shape[-1], lay["size"], x).T
            else:
                raise ValueError(f"unknown layer op {op!r}")
        return x

    def _matrix(self, n_in: int, n_out: int, like: Any) -> Any:
        if (n_in, n_out) not in self._resample:
            m = self.torch.from_numpy(resample_matrix(n_in, n_out)).to(like.device)
            self._resample[(n_in, n_out)] = m
        return self._resample[(n_in, n_out)]

    def encode(self, z: Any) -> tuple[Any, Any]:
        h = self.run("encoder", z)
        mu = self.run("enc_skip", z) + self.run("mu", h)
        if "logvar" not in self.spec["branches"]:
            return mu, None
        return mu, self.run("logvar", h).clamp(*LOGVAR_RANGE)

    def decode(self, s: Any) -> Any:
        return self.run("dec_skip", s) + self.run("decoder", s)


def _losses(
    net: _Runner, z: Any, w: Any, *, beta: float, generator: Any | None
) -> tuple[Any, Any, Any]:
    """``(loss, mse, kl)`` of a batch; the VAE samples its latents when ``generator``."""
    torch = net.torch
    mu, lv = net.encode(z)
    s = mu
    if lv is not None and generator is not None:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        s = mu + torch.exp(0.5 * lv) * eps
    mse = torch.mean(w * (net.decode(s) - z) ** 2)
    if lv is None:
        return mse, mse, torch.zeros((), device=z.device)
    kl = 0.5 * torch.mean(torch.sum(mu * mu + torch.exp(lv) - 1.0 - lv, dim=1))
    nll = 0.5 * z.shape[1] * torch.log(mse.clamp_min(1e-12))
    return nll + beta * kl, mse, kl


def _evaluate(net: _Runner, z: Any, w: Any, *, beta: float) -> tuple[float, float, float]:
    """Held-out ``(loss, mse, kl)`` with the latent means, in batches."""
    torch = net.torch
    sse, kls, n = 0.0, 0.0, z.shape[0]
    with torch.no_grad():
        for a in range(0, n, _EVAL_BATCH):
            _, mse, kl = _losses(net, z[a : a + _EVAL_BATCH], w, beta=beta, generator=None)
            m = min(_EVAL_BATCH, n - a)
            sse += float(mse) * m
            kls += float(kl) * m
    mse, kl = sse / n, kls / n
    if "logvar" not in net.spec["branches"]:
        return mse, mse, 0.0
    return 0.5 * z.shape[1] * math.log(max(mse, 1e-12)) + beta * kl, mse, kl


def train_network(
    spec: dict[str, Any],
    params: dict[str, np.ndarray],
    z_train: np.ndarray,
    z_val: np.ndarray,
    weights: np.ndarray,
    *,
    device: str = "cpu",
    say: Callable[[str], None] = lambda _: None,
    **options: Any,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Train ``params`` (float32, modified copies returned) on ``z_train (n, band)``.

    ``options``: ``epochs``, ``batch_size``, ``learning_rate``, ``patience``, ``beta``,
    ``seed`` (all required; see :func:`cubepipe.pipeline.compression.autoencoder.fit.fit_autoencoder`).

    Returns the parameters of the best held-out epoch and a JSON-ready report: epochs
    run, best epoch, held-out loss/MSE (and KL) at the start and at the best epoch, pixel
    counts, seconds, torch version and device. Deterministic on the CPU for a ``seed``
    (batch order and VAE noise come from generators seeded with it).
    """
    torch = import_torch()
    dev = torch_device(torch, device, say)
    threads = torch.get_num_threads()
    # One intra-op thread: these small per-pixel networks run several times *slower* with
    # more (OpenMP fork/join per tiny op), and results then do not depend on the core count.
    torch.set_num_threads(1)
    try:
        return _train(torch, dev, spec, params, z_train, z_val, weights, **options, say=say)
    finally:
        torch.set_num_threads(threads)


def _train(
    torch: ModuleType,
    dev: Any,
    spec: dict[str, Any],
    params: dict[str, np.ndarray],
    z_train: np.ndarray,
    z_val: np.ndarray,
    weights: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patience: int,
    beta: float,
    seed: int,
    say: Callable[[str], None],
    init: str = "pca",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    t0 = time.perf_counter()
    p = {
        k: torch.nn.Parameter(torch.from_numpy(np.array(v, dtype=np.float32)).to(dev))
        for k, v in params.items()
    }
    net = _Runner(torch, spec, p)
    zt = torch.from_numpy(np.ascontiguousarray(z_train, dtype=np.float32)).to(dev)
    zv = torch.from_numpy(np.ascontiguousarray(z_val, dtype=np.float32)).to(dev)
    w = torch.from_numpy(np.asarray(weights, dtype=np.float32)).to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    order_rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(list(p.values()), lr=learning_rate)
    kind = spec["kind"]
    batch_size = max(1, min(batch_size, zt.shape[0] // _MIN_STEPS))

    def snapshot() -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in p.items()}

    start = _evaluate(net, zv, w, beta=beta)
    best, best_params = start, snapshot()
    plan = Schedule(
        epochs=epochs,
        patience=patience,
        learning_rate=learning_rate,
        start_loss=start[0],
        start_name="PCA start" if init == "pca" else "random start",
    )
    say(
        f"cubepipe compress: {kind} training on {zt.shape[0]} pixels ({zv.shape[0]} held out), "
        f"{dev.type}; held-out loss of the {plan.start_name} {start[0]:.6g}"
    )
    for epoch in range(1, epochs + 1):
        perm = torch.from_numpy(order_rng.permutation(zt.shape[0])).to(dev)
        total, count = 0.0, 0
        rate = plan.learning_rate_now
        for group in opt.param_groups:
            group["lr"] = rate
        for a in range(0, zt.shape[0], batch_size):
            batch = zt[perm[a : a + batch_size]]
            loss, _, _ = _losses(net, batch, w, beta=beta, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * batch.shape[0]
            count += batch.shape[0]
        current = _evaluate(net, zv, w, beta=beta)
        improved, stop = plan.end_epoch(epoch, current[0])
        if improved:
            best, best_params = current, snapshot()
        say(
            f"cubepipe compress: {kind} epoch {epoch}/{epochs}: train loss {total / count:.6g}, "
            f"held-out {current[0]:.6g}{' (best)' if improved else ''}, "
            f"lr {rate:.3g}"
        )
        if stop:
            break
    report = {
        **plan.report(),
        "heldout_loss_initial": start[0],
        "heldout_mse_initial": start[1],
        "heldout_loss": best[0],
        "heldout_mse": best[1],
        "train_pixels": int(zt.shape[0]),
        "batch_size": batch_size,
        "heldout_pixels": int(zv.shape[0]),
        "train_seconds": time.perf_counter() - t0,
        "torch": torch.__version__,
        "train_device": dev.type,
    }
    if kind == "vae":
        report["heldout_kl_initial"] = start[2]
        report["heldout_kl"] = best[2]
    return best_params, report
