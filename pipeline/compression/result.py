"""What :func:`~cubepipe.pipeline.compression.api.prepare_compress` returns: the output
of a compression and its pending reconstruction-error metrics, written in one pass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import xarray as xr

from cubepipe.pipeline.compression.autoencoder.apply import summarize_ae_metrics
from cubepipe.pipeline.compression.pca import summarize_metrics
from cubepipe.storage import write_cube

__all__ = ["Compressed"]


@dataclass(frozen=True, eq=False)
class Compressed:
    """What :func:`prepare_compress` returns: the output and its pending error metrics.

    Attributes
    ----------
    dataset
        The output Dataset, as :func:`compress` returns it (lazy ``scores``).
    partials
        Lazy per-chunk partial sums of the reconstruction error (float64 dask array),
        computed from the same task per chunk as the scores: computing both together
        reads the input once.
    method
        ``"pca"``, ``"ae"`` or ``"vae"``.
    params
        The parameters as resolved (JSON-ready), for the store's history entry.
    training
        An autoencoder's training report (held-out losses, epochs); empty otherwise.
    """

    dataset: xr.Dataset
    partials: da.Array
    method: str
    params: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def components(self) -> int:
        """``K``, the number of components (scores per pixel)."""
        return int(self.dataset.sizes["component"])

    @property
    def results(self) -> dict[str, Any]:
        """``{"metrics": partials}``: the ``results`` of :func:`~cubepipe.storage.write_cube`."""
        return {"metrics": self.partials}

    def summarize(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The metrics from the computed :attr:`results` (``summarize`` of ``write_cube``):
        ``rmse``, ``psnr_db``, ``sam_rad``, ``sam_deg``, ``n_values``, ``data_range``; a VAE
        adds ``kl_nats``, a trained autoencoder its ``training`` report."""
        if self.method == "pca":
            return summarize_metrics(values["metrics"])
        out: dict[str, Any] = summarize_ae_metrics(values["metrics"], kind=self.method)
        if self.training:
            out["training"] = self.training
        return out

    def metrics(self) -> dict[str, Any]:
        """Compute the metrics alone (a read of the input; :meth:`write` shares it)."""
        return self.summarize({"metrics": self.partials.compute()})

    def write(self, path: str | Path, **kwargs: Any) -> Path:
        """Write :attr:`dataset` with :func:`~cubepipe.storage.write_cube` (``op``
        ``compress``, :attr:`params`, ``component`` chunked whole), measuring the metrics
        in the same pass; they are recorded as the history entry's ``results``.
        ``kwargs`` go to ``write_cube`` (``inputs``, ``chunks``, ``overwrite``, ...)."""
        chunks = {"component": self.components, **(kwargs.pop("chunks", None) or {})}
        return write_cube(
            self.dataset,
            path,
            op="compress",
            params=self.params,
            chunks=chunks,
            results=self.results,
            summarize=self.summarize,
            **kwargs,
        )
